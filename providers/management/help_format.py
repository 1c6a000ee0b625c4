"""Help output for the operator commands, whose epilogs are worked examples."""

from django.core.management.base import DjangoHelpFormatter


class EpilogAsWrittenFormatter(DjangoHelpFormatter):
    """Wrap the one-paragraph description as usual; print the multi-line epilog as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
