"""The wire contract shared by the ingress, the workers and any outside publisher or reader."""

from schemas.costs import CostClass, classify, estimate_cost
from schemas.events import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    FinishReason,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    is_final,
    parse_event,
)
from schemas.naming import Names
from schemas.requests import ChatMessage, InferenceRequest, SamplingParams
from schemas.settings import Settings

__all__ = [
    "ChatMessage",
    "CostClass",
    "DoneEvent",
    "ErrorCode",
    "ErrorEvent",
    "Event",
    "FinishReason",
    "InferenceRequest",
    "Names",
    "SamplingParams",
    "Settings",
    "TokenEvent",
    "TokenLogprob",
    "TopLogprob",
    "classify",
    "estimate_cost",
    "is_final",
    "parse_event",
]
