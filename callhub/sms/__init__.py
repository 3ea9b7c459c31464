"""The SMS after the call (issue 13): settings, the decision, gateways, the sender loop.

Sits low: imports only callhub.config, callhub.records and callhub.logs, so
the store can decide and queue an SMS in the transaction that saves its
call. What the integrator wires:

- settings: `SmsSettings` (`sms_settings_from_table` for the `[sms]` table);
- decision: `plan_sms` / `check_history` / `decide` / `decide_with_history`,
  `AgentContact`, `RecipientHistory`, `check_number`;
- sending: `gateway_from_settings`, `SmsWorker`, the `Outbox` protocol
  (`MemoryOutbox` for tests), `SmsMetrics`.
"""

from callhub.sms.decide import (
    AgentContact,
    Decision,
    RecipientHistory,
    Skip,
    SmsPlan,
    check_history,
    decide,
    decide_with_history,
    idempotency_key,
    plan_sms,
)
from callhub.sms.gateways import gateway_from_settings
from callhub.sms.message import OutgoingSms, SendResult, SmsGateway
from callhub.sms.metrics import SmsMetrics
from callhub.sms.numbers import check_number
from callhub.sms.outbox import MemoryOutbox, Outbox, OutboxMessage
from callhub.sms.settings import SmsRule, SmsSettings, sms_settings_from_table
from callhub.sms.worker import RetryPolicy, SmsWorker

__all__ = [
    "AgentContact", "Decision", "MemoryOutbox", "Outbox", "OutboxMessage", "OutgoingSms",
    "RecipientHistory", "RetryPolicy", "SendResult", "Skip", "SmsGateway", "SmsMetrics",
    "SmsPlan", "SmsRule", "SmsSettings", "SmsWorker", "check_history", "check_number",
    "decide", "decide_with_history", "gateway_from_settings", "idempotency_key", "plan_sms",
    "sms_settings_from_table",
]
