"""What the example scripts share on the command line."""
import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show '(default: X)' only where the help does not already say it and X means something."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)
