"""Local emulator of the Stripe API subset used by the billing product.

Start it with ``python -m stripe_emulator [--port N] [--host H]
[--webhook-url URL] [--webhook-secret S]`` (default 127.0.0.1:12111) and
point stripe-python at it::

    client = stripe.StripeClient(DEFAULT_API_KEY, base_addresses={"api": "http://127.0.0.1:12111"})

Any ``sk_...`` key is accepted.  Webhooks are signed with
``DEFAULT_WEBHOOK_SECRET`` unless configured otherwise.  The control API
(``/_emulator/*``) needs the header ``X-Emulator-Token`` (``--control-token``
or ``$STRIPE_EMULATOR_CONTROL_TOKEN``).  In tests use
:class:`stripe_emulator.testing.EmulatorProcess`, which does all of that.
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12111
DEFAULT_API_KEY = "sk_test_emulator"
DEFAULT_WEBHOOK_SECRET = "whsec_emulator_local_development_secret"
API_VERSION = "2026-10-28.endive"
CONTROL_TOKEN_HEADER = "X-Emulator-Token"  # the /_emulator/* control API's secret travels in this header

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_API_KEY",
    "DEFAULT_WEBHOOK_SECRET",
    "API_VERSION",
    "CONTROL_TOKEN_HEADER",
    "EmulatorProcess",
    "create_app",
]


def __getattr__(name):  # lazy: importing the package stays cheap
    if name == "EmulatorProcess":
        from .testing import EmulatorProcess

        return EmulatorProcess
    if name == "create_app":
        from .server import create_app

        return create_app
    raise AttributeError(name)
