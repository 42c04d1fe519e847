"""``carnival alerts route``: deliver ``alerts.v1`` to webhooks (Alertmanager and Slack shapes).

Public: ``AlertRouter``/``RouterConfig`` (the consumer loop), ``Receiver``, ``DedupWindow``, the payload
builders, and the click group ``processors.alert_router.cli.alerts``.
"""

from processors.alert_router.dedup import DedupWindow
from processors.alert_router.delivery import Receiver
from processors.alert_router.payloads import alertmanager_payload, slack_payload

__all__ = ["DedupWindow", "Receiver", "alertmanager_payload", "slack_payload"]
