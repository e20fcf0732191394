"""The app's settings, for the benchmark server (a place for settings-level what-ifs;
the ones measured so far were adopted by chatimg/settings.py)."""

from chatimg.settings import *  # noqa: F403
