"""Run the fake OpenAI, Anthropic and Gemini servers in the foreground until Ctrl-C."""

from django.core.management.base import BaseCommand, CommandError

from providers.fake.server import is_loopback, serve


class Command(BaseCommand):
    help = "Serve fake OpenAI, Anthropic and Gemini APIs (real wire formats) on loopback until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8900, help="Port to listen on (default 8900).")
        parser.add_argument(
            "--allow-remote",
            action="store_true",
            help="Allow a non-loopback --host. The fake accepts any well-formed key; do not expose it.",
        )
        parser.add_argument("--access-log", action="store_true", help="Log every request (off for benchmarks).")

    def handle(self, *args, host, port, allow_remote, access_log, **options):
        if not allow_remote and not is_loopback(host):
            raise CommandError(f"Refusing to listen on non-loopback host {host!r}; pass --allow-remote to do it.")
        url = f"http://{host}:{port}"
        self.stdout.write(
            f"Fake providers on {url} (Ctrl-C to stop)\n"
            f"  OpenAI     base_url={url}/openai/v1      keys sk-...\n"
            f"  Anthropic  base_url={url}/anthropic      keys sk-ant-...\n"
            f"  Gemini     base_url={url}/gemini         keys AIza...\n"
            "  Directives in the key (sk-demo~fail=429~latency=250) or in the headers:\n"
            "    fail=<what>    X-Fake-Fail          400 | 429 | 500 | 503 | 529 | timeout | malformed | midstream\n"
            "    latency=<ms>   X-Fake-Latency-Ms    wait before answering\n"
            "    cached=<n>     X-Fake-Cached-Tokens report n cached input tokens\n"
            "    output=<what>  X-Fake-Output        invalid | invalid-once: structured output that fails its schema\n"
            "                                        (invalid-once: only the first request per key and schema)\n"
            "    stall=<ms>     X-Fake-Stall-Ms      streams: send the first delta, then wait ms before the rest"
        )
        self.stdout.flush()
        try:
            serve(host, port, access_log=access_log)
        except OSError as exc:
            raise CommandError(f"Cannot listen on {host}:{port}: {exc}") from exc
