"""--state-file: the emulator's account outlives a restart, as Stripe's does (what a second `make run` needs)."""

import json
import os
import time
from pathlib import Path

import requests

from stripe_emulator.testing import EmulatorProcess


def _billed_and_paid(client):
    """A customer with a card and one paid invoice; the ids a later run must still know."""
    customer = client.v1.customers.create(params={"email": "keep@example.com", "payment_method": "pm_card_visa",
                                                  "invoice_settings": {"default_payment_method": "pm_card_visa"}},
                                          options={"idempotency_key": "cus-keep"})
    client.v1.invoice_items.create(params={"customer": customer.id, "amount": 2900, "currency": "usd",
                                           "description": "Starter"})
    invoice = client.v1.invoices.create(params={"customer": customer.id, "pending_invoice_items_behavior": "include",
                                                "auto_advance": False})
    paid = client.v1.invoices.pay(invoice.id, options={"idempotency_key": "pay-keep"})
    assert paid.status == "paid"
    return customer, paid


def _wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in %s s" % timeout
        time.sleep(0.1)


def test_objects_survive_a_restart_and_new_ids_do_not_collide(tmp_path):
    state = str(tmp_path / "emulator-state.json")
    with EmulatorProcess(state_file=state) as first:
        customer, invoice = _billed_and_paid(first.stripe_client())
        charges = first.charges()
    assert json.loads(Path(state).read_text())["format"] == "stripe_emulator-state"  # written on SIGTERM

    with EmulatorProcess(state_file=state) as second:
        client = second.stripe_client()
        again = client.v1.invoices.retrieve(invoice.id)
        assert (again.status, again.amount_paid, again.number) == ("paid", 2900, invoice.number)
        assert [line.description for line in client.v1.invoices.line_items.list(invoice.id).data] == ["Starter"]
        kept = client.v1.customers.retrieve(customer.id)
        assert kept.email == "keep@example.com"
        assert kept.invoice_settings.default_payment_method  # the card, and what it does, came back too
        assert second.charges() == charges

        # Replays of keys used before the restart answer as before instead of acting twice.
        replayed = client.v1.customers.create(
            params={"email": "keep@example.com", "payment_method": "pm_card_visa",
                    "invoice_settings": {"default_payment_method": "pm_card_visa"}},
            options={"idempotency_key": "cus-keep"})
        assert replayed.id == customer.id
        assert len(client.v1.customers.list().data) == 1
        assert client.v1.invoices.pay(invoice.id, options={"idempotency_key": "pay-keep"}).status == "paid"
        assert len(second.charges()) == 1

        # New objects get new ids, and invoice numbers carry on from the saved counter.
        newer, newer_invoice = _billed_and_paid_again(client)
        assert newer.id != customer.id and newer_invoice.id != invoice.id
        assert newer_invoice.number != invoice.number
        assert client.v1.invoices.retrieve(invoice.id).customer == customer.id


def _billed_and_paid_again(client):
    customer = client.v1.customers.create(params={"email": "new@example.com", "payment_method": "pm_card_visa",
                                                  "invoice_settings": {"default_payment_method": "pm_card_visa"}})
    client.v1.invoice_items.create(params={"customer": customer.id, "amount": 100, "currency": "usd"})
    invoice = client.v1.invoices.create(params={"customer": customer.id, "pending_invoice_items_behavior": "include",
                                                "auto_advance": False})
    return customer, client.v1.invoices.pay(invoice.id)


def test_a_declining_card_still_declines_after_a_restart(tmp_path):
    state = str(tmp_path / "emulator-state.json")
    with EmulatorProcess(state_file=state) as first:
        client = first.stripe_client()
        customer = client.v1.customers.create(params={
            "payment_method": "pm_card_chargeCustomerFail",
            "invoice_settings": {"default_payment_method": "pm_card_chargeCustomerFail"}})
        client.v1.invoice_items.create(params={"customer": customer.id, "amount": 4900, "currency": "usd"})
        invoice = client.v1.invoices.create(params={"customer": customer.id, "auto_advance": False,
                                                    "pending_invoice_items_behavior": "include"})
        client.v1.invoices.finalize_invoice(invoice.id)

    with EmulatorProcess(state_file=state) as second:
        answer = requests.post(second.url + "/v1/invoices/%s/pay" % invoice.id, auth=(second.api_key, ""))
        assert answer.status_code == 402 and answer.json()["error"]["decline_code"] == "generic_decline"
        second.set_default_payment_method(customer.id, "pm_card_visa")  # what the portal does after a card change
        assert second.stripe_client().v1.invoices.pay(invoice.id).status == "paid"


def test_a_crash_loses_at_most_the_last_seconds(tmp_path):
    state = str(tmp_path / "emulator-state.json")
    crashed = EmulatorProcess(state_file=state)
    try:
        _, invoice = _billed_and_paid(crashed.stripe_client())
        _wait_for(lambda: os.path.exists(state) and invoice.id in Path(state).read_text())
    finally:
        crashed.kill()  # SIGKILL: no shutdown save
    with EmulatorProcess(state_file=state) as after:
        assert after.stripe_client().v1.invoices.retrieve(invoice.id).status == "paid"


def test_reset_clears_the_saved_account(tmp_path):
    state = str(tmp_path / "emulator-state.json")
    with EmulatorProcess(state_file=state) as first:
        customer = first.stripe_client().v1.customers.create(params={"email": "gone@example.com"})
        first.reset()
        assert customer.id not in Path(state).read_text()
    with EmulatorProcess(state_file=state) as second:
        answer = requests.get(second.url + "/v1/customers/%s" % customer.id, auth=(second.api_key, ""))
        assert answer.status_code == 404


def test_a_corrupted_file_is_kept_aside_and_the_emulator_starts_empty(tmp_path, capfd):
    state = tmp_path / "emulator-state.json"
    state.write_text('{"format": "stripe_emulator-state", "version": 1, "store": {"customers": ')  # cut short
    with EmulatorProcess(state_file=str(state)) as emu:
        assert emu.stripe_client().v1.customers.list().data == []
        emu.stripe_client().v1.customers.create(params={"email": "fresh@example.com"})
    assert (tmp_path / "emulator-state.json.bad").read_text().endswith('"customers": ')
    assert "fresh@example.com" in state.read_text()
    err = capfd.readouterr().err
    assert "emulator-state.json.bad" in err and "started empty" in err


def test_a_file_from_another_version_is_kept_aside(tmp_path):
    state = tmp_path / "emulator-state.json"
    state.write_text(json.dumps({"format": "stripe_emulator-state", "version": 99, "store": {}}))
    with EmulatorProcess(state_file=str(state)) as emu:
        answer = requests.get(emu.url + "/v1/customers", auth=(emu.api_key, ""))
        assert answer.json()["data"] == []
    assert json.loads((tmp_path / "emulator-state.json.bad").read_text())["version"] == 99


def test_without_a_state_file_nothing_is_written_or_inherited(tmp_path, monkeypatch):
    leaked = tmp_path / "from-the-shell.json"
    monkeypatch.setenv("STRIPE_EMULATOR_STATE_FILE", str(leaked))
    with EmulatorProcess() as emu:
        emu.stripe_client().v1.customers.create(params={"email": "memory@example.com"})
    assert not leaked.exists()
