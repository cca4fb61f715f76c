"""Stripe test PaymentMethod tokens understood by the emulator.

Attaching a token such as ``pm_card_visa`` creates a *new* PaymentMethod
(``pm_...``) whose card details come from this table and which remembers
the behaviour, exactly like Stripe test mode.

Behaviours:

``succeed``          charges succeed.
``charge_fail``      attaches fine; every charge is declined
                     (402 card_error ``card_declined`` / ``generic_decline``).
``attach_decline``   attaching is declined (402 ``card_declined``).
``insufficient``     charges declined with decline_code ``insufficient_funds``.
``lost_card``        charges declined with decline_code ``lost_card`` (a hard decline).
``stolen_card``      charges declined with decline_code ``stolen_card`` (a hard decline).
``fraudulent``       charges blocked by Radar: decline_code ``fraudulent``.
``auth_required``    charges fail with 402 ``authentication_required``
                     (invoice stays open; ``invoice.payment_action_required``).

Tokens, card numbers and decline codes are those of Stripe's testing docs ("Declined payments",
"Fraud prevention", "Authentication"). One deliberate difference: Stripe checks a card when it is
attached and may refuse these decline cards there (its docs point to ``pm_card_chargeCustomerFail``
for "declines after attaching"); the emulator lets them attach so that each decline code can drive
the saved-card (off-session) path the product uses. ``pm_card_visa_chargeDeclined`` is declined
when attached, as in Stripe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass(frozen=True)
class TestCard:
    __test__ = False  # not a pytest test class

    token: str
    brand: str
    last4: str
    behaviour: str
    label: str  # shown on the portal / hosted invoice pages
    funding: str = "credit"
    country: str = "US"
    exp_month: int = 12
    exp_year: int = 2034

    @property
    def display_brand(self) -> str:
        return {"amex": "american_express"}.get(self.brand, self.brand)


TEST_CARDS: Dict[str, TestCard] = {
    c.token: c
    for c in [
        TestCard("pm_card_visa", "visa", "4242", "succeed", "Visa 4242 (succeeds)"),
        TestCard("pm_card_mastercard", "mastercard", "4444", "succeed", "Mastercard 4444 (succeeds)"),
        TestCard("pm_card_chargeCustomerFail", "visa", "0341", "charge_fail",
                 "Visa 0341 (declines on charge)"),
        TestCard("pm_card_visa_chargeDeclinedInsufficientFunds", "visa", "9995", "insufficient",
                 "Visa 9995 (declines: insufficient funds)", funding="debit"),
        TestCard("pm_card_visa_chargeDeclinedLostCard", "visa", "9987", "lost_card",
                 "Visa 9987 (declines: lost card)"),
        TestCard("pm_card_visa_chargeDeclinedStolenCard", "visa", "9979", "stolen_card",
                 "Visa 9979 (declines: stolen card)"),
        TestCard("pm_card_radarBlock", "visa", "0019", "fraudulent",
                 "Visa 4100 ... 0019 (blocked as fraudulent)"),
        TestCard("pm_card_authenticationRequired", "visa", "3184", "auth_required",
                 "Visa 3184 (requires authentication)"),
        TestCard("pm_card_visa_chargeDeclined", "visa", "0002", "attach_decline",
                 "Visa 0002 (declined when attached)"),
    ]
}

# Other spellings of the same cards (Stripe accepts pm_card_chargeDeclined; the emulator's first token
# for 9995 lacked the brand).
TEST_CARDS["pm_card_chargeDeclined"] = TEST_CARDS["pm_card_visa_chargeDeclined"]
TEST_CARDS["pm_card_chargeDeclinedInsufficientFunds"] = TEST_CARDS["pm_card_visa_chargeDeclinedInsufficientFunds"]

#: Cards offered on the billing portal page, in display order.
PORTAL_CARDS: List[TestCard] = [
    TEST_CARDS[t]
    for t in (
        "pm_card_visa",
        "pm_card_mastercard",
        "pm_card_chargeCustomerFail",
        "pm_card_visa_chargeDeclinedInsufficientFunds",
        "pm_card_visa_chargeDeclinedLostCard",
        "pm_card_visa_chargeDeclinedStolenCard",
        "pm_card_radarBlock",
        "pm_card_authenticationRequired",
        "pm_card_visa_chargeDeclined",
    )
]


def lookup(token: str) -> Optional[TestCard]:
    return TEST_CARDS.get(token)


#: behaviour -> (code, decline_code, message) of the 402 raised on charge.
CHARGE_FAILURES = {
    "charge_fail": ("card_declined", "generic_decline", "Your card was declined."),
    "insufficient": ("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "lost_card": ("card_declined", "lost_card", "Your card was declined."),
    "stolen_card": ("card_declined", "stolen_card", "Your card was declined."),
    "fraudulent": ("card_declined", "fraudulent", "Your card was declined."),
    "auth_required": (
        "authentication_required",
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
}

ATTACH_FAILURE = ("card_declined", "generic_decline", "Your card was declined.")
