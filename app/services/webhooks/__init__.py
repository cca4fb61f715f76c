"""Stripe webhooks in three rooms (Lago's shape): intake stores and answers, processing claims and dispatches,
handlers decide.

- `intake.py`: `Intake.receive`, called by the WSGI endpoint in front of Flask (app/webhooks/endpoint.py).
  The signature is checked on the raw body, the event is stored with INSERT ... ON CONFLICT DO NOTHING on its
  unique Stripe id (two concurrent deliveries of one event store one row), and a newly stored row wakes a
  drainer (unless that drainer's Redis flag says it is running already). Nothing is decided at receipt, so it
  stays fast: one INSERT and one Redis SET per delivery. The one exception is an event of a type no handler
  takes (`flask stripe setup-webhook` subscribes to the handled types only, but Stripe's CLI and a
  dashboard-made endpoint may send more): it is stored already `ignored`, without its body, and wakes nobody.
- `processing.py`: a drainer (`drain`, the job `app.jobs.drain_webhook_events`) claims the oldest pending rows in
  one statement that also reads them (SKIP LOCKED, so drainers share a backlog; the batch starts at one event
  and doubles while a backlog lasts), lets the handlers decide what they can for a whole batch without the ORM
  (QUICK), gives every other event to its handler (HANDLERS), and records all results in one statement. A
  drainer's claimed rows carry its token, leased in Redis while it runs, so the rows of a drainer that died go
  back to pending within a minute. `process_event` processes one given row; `retry_failed` re-queues failed
  rows with exponential back-off and leaves one to a person after MAX_ATTEMPTS; `replay_event` is the root
  admin's button.
- `handlers/`: the event-type table at the top of `handlers/__init__.py`, one function per type beside it.
  Handlers never trust the state in the payload: they re-read the object from Stripe and apply it with
  payments.apply_stripe_invoice, whose transitions only move forward, so an old `invoice.payment_failed`
  arriving after `invoice.paid` cannot reopen a paid invoice and any delivery order ends in Stripe's state.
- `events.py`: what the rooms share: the row's lifecycle, the event as a handler sees it, a handler's result.

Row lifecycle: pending → processing → processed | ignored | failed. `attempts` counts claims (an event ignored at
receipt: 1); `processed_at` is when the last attempt started or ended (for a failed row: when it failed, the
start of its back-off). A note on a processed or ignored row (e.g. "no invoice here for in_…") is kept in
`last_error`. Jobs are enqueued through app/queue.py, which owns their ids.
"""
