"""Topic names. Every input topic is keyed by user id so one partition owns a user."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str = "portrait"

    @property
    def clickstream(self) -> str:
        return f"{self.prefix}.clickstream"

    @property
    def transactions(self) -> str:
        return f"{self.prefix}.transactions"

    @property
    def feedback(self) -> str:
        return f"{self.prefix}.feedback"

    @property
    def identify(self) -> str:
        return f"{self.prefix}.identify"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def erase_requests(self) -> str:
        """Requests to erase a user everywhere (JSON: user_id, optional request_id)."""
        return f"{self.prefix}.privacy.erase"

    @property
    def erase_confirmations(self) -> str:
        """One confirmation per completed erasure (stream.service.privacy.ErasureConfirmation)."""
        return f"{self.prefix}.privacy.erased"

    def trigger(self, suffix: str) -> str:
        """A trigger topic, e.g. ``trigger("triggers.coupon")`` → ``portrait.triggers.coupon``."""
        return f"{self.prefix}.{suffix}"

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(self.trigger(s) for s in TRIGGER_SUFFIXES)

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.clickstream, self.transactions, self.feedback, self.identify)

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.inputs, self.dead_letters, *self.triggers, self.erase_requests, self.erase_confirmations)

    def for_event_type(self, event_type: str) -> str:
        """The input topic an event of ``event_type`` belongs on."""
        if event_type in CLICKSTREAM_TYPES:
            return self.clickstream
        if event_type in TRANSACTION_TYPES:
            return self.transactions
        if event_type == "feedback":
            return self.feedback
        return self.identify


CLICKSTREAM_TYPES = frozenset({"page_view", "search", "add_to_cart", "remove_from_cart", "checkout_started"})
TRANSACTION_TYPES = frozenset({"order_paid", "order_refunded"})
# One topic per action type (stream/rules/actions.py registers them; a unit test keeps both in sync).
TRIGGER_SUFFIXES = ("triggers.coupon", "triggers.care_sms")
