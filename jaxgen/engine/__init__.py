"""Continuous batching: decode slots over a paged KV cache, a host scheduler, generate_batch."""

from jaxgen.engine.batch import generate_batch, result_dict
from jaxgen.engine.blocks import BlockManager
from jaxgen.engine.engine import Engine
from jaxgen.engine.handle import Handle, Result
from jaxgen.engine.requests import ENGINE_FIELDS, Prepared
from jaxgen.engine.settings import Limits, RowSettings
from jaxgen.engine.strategy import SlotSample, SlotSub

__all__ = ["ENGINE_FIELDS", "BlockManager", "Engine", "Handle", "Limits", "Prepared", "Result",
           "RowSettings", "SlotSample", "SlotSub", "generate_batch", "result_dict"]
