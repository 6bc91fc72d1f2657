"""The plugin's logger, a child of vLLM's so its lines appear in vLLM's log format and level."""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm.vllm_bi_plugin")
