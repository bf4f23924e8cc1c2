"""Automation rules and trigger delivery: the pure core (no Kafka, Redis or Faust).

Load rules with ``load_rules``; per user step call ``evaluate_rules`` with the previous and current
profile and the user's ``DeliveryMemory``; publish the ``send`` decisions' triggers on their topic.
See docs/rules.md.
"""

from stream.contracts.triggers import Trigger
from stream.rules.actions import ACTION_TYPES, ActionParams, ActionSpec, ActionType, register_action
from stream.rules.conditions import Condition, fires, holds
from stream.rules.config import (
    MODEL_TAG_DOMAINS,
    MODEL_TAGS,
    DeliverySettings,
    KnownTags,
    QuietHours,
    Rule,
    RuleSet,
    check_values,
    default_known_tags,
    load_rules,
    parse_rules,
    per_rule_set,
    tag_domains,
    tags_referenced,
)
from stream.rules.effect import Exposure, GroupStats, RuleEffect, effects
from stream.rules.evaluate import REASONS, WITHHELD, Decision, Delivery, DeliveryMode, Outcome, Reason, evaluate_rules
from stream.rules.trigger import holdout, trigger_id
from stream.tagging.memory import DeliveryMemory, DeliveryRecord

__all__ = [
    "ACTION_TYPES",
    "MODEL_TAGS",
    "MODEL_TAG_DOMAINS",
    "REASONS",
    "WITHHELD",
    "ActionParams",
    "ActionSpec",
    "ActionType",
    "Condition",
    "Decision",
    "Delivery",
    "DeliveryMemory",
    "DeliveryMode",
    "DeliveryRecord",
    "DeliverySettings",
    "Exposure",
    "GroupStats",
    "KnownTags",
    "Outcome",
    "QuietHours",
    "Reason",
    "Rule",
    "RuleEffect",
    "RuleSet",
    "Trigger",
    "check_values",
    "default_known_tags",
    "effects",
    "evaluate_rules",
    "fires",
    "holdout",
    "holds",
    "load_rules",
    "parse_rules",
    "per_rule_set",
    "register_action",
    "tag_domains",
    "tags_referenced",
    "trigger_id",
]
