"""The read API and dashboard process (``portrait api``): ``stream.api.app.create_app``."""
