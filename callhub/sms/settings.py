"""The `[sms]` settings, for the SMS code: defined in callhub.config.sms (Settings embeds them)."""

from callhub.config.sms import (
    ANY_LINE,
    DEFAULT_ANSWERED_TEMPLATE,
    DEFAULT_MISSED_TEMPLATE,
    DEFAULT_TEMPLATES,
    ENV_SECRETS,
    PLACEHOLDERS,
    After,
    AliyunSettings,
    Kind,
    SmsRule,
    SmsSettings,
    apply_sms_env,
    error_key,
    sms_settings_from_table,
    template_fields,
)

__all__ = [
    "ANY_LINE", "DEFAULT_ANSWERED_TEMPLATE", "DEFAULT_MISSED_TEMPLATE", "DEFAULT_TEMPLATES",
    "ENV_SECRETS", "PLACEHOLDERS", "After", "AliyunSettings", "Kind", "SmsRule", "SmsSettings",
    "apply_sms_env", "error_key", "sms_settings_from_table", "template_fields",
]
