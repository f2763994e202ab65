"""What an OpenAI-compatible call asks for, parsed and mapped onto the wire contract (``InferenceRequest``).

Pure models and mapping, no I/O: ``openai_api.py`` serves them. Each name and range is OpenAI's (or vLLM's,
for its extensions); what brigade does not implement is refused by name (``off_only``).
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

from producer.errors import ApiError, FieldNames
from producer.openai_structured import ResponseFormat, VllmStructuredOutputs, structured_output
from producer.openai_tools import OpenAITool, ToolCalling, ToolChoice, plan_tools
from schemas.reasons import reason
from schemas.requests import MAX_LOGPROBS, ChatMessage, InferenceRequest, StructuredOutput, TemplateKwargs, ToolCall
from schemas.settings import ToolCallParser

MAX_CHOICES = 16  # n: each choice is a request of its own, on the class's topic like any other
MAX_REQUESTS = 256  # prompts × n of one legacy completion call: each is a request of its own


class OutputPlan(NamedTuple):
    """What a call's answer is held to and how it is read back."""

    structured: tuple[StructuredOutput, str] | None  # the contract's structured_output, and the field it came from
    calling: ToolCalling | None  # how answers become tool_calls: chat with tools


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextPart(BaseModel):
    """One part of a message's content in the list form newer SDKs send; only text is served here."""

    type: Literal["text"]
    text: str


class OpenAIMessage(BaseModel):
    """A chat turn as OpenAI clients send it: ``developer`` is their newer name for ``system``, content may be
    a list of text parts, or null beside an assistant's tool calls. Mapped onto the wire contract's
    ``ChatMessage``."""

    model_config = ConfigDict(extra="ignore")  # name, refusal… are accepted and unused

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def to_chat(self) -> ChatMessage:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or ())
        return ChatMessage(
            role="system" if self.role == "developer" else self.role,
            content=content,
            tool_calls=self.tool_calls or None,
            tool_call_id=self.tool_call_id,
        )


def chat_turns(messages: list[OpenAIMessage]) -> list[ChatMessage]:
    """The contract's turns; one that breaks the contract's rules for a turn (tool fields on their roles) is a
    422 naming it."""
    turns = []
    for index, message in enumerate(messages):
        try:
            turns.append(message.to_chat())
        except ValidationError as exc:
            param = f"messages.{index}"
            raise ApiError(422, f"{param}: {reason(exc.errors()[0])}", param=param) from None
    return turns


def off_only(*off: Any) -> AfterValidator:
    """For a parameter that changes what OpenAI (or vLLM) would answer and that brigade does not implement:
    accept only null and ``off``, the values that mean "off" (SDKs and frameworks often send those). A caller
    who asked for tool calls, JSON mode or an echoed prompt must not get a plain answer that looks like one."""
    accepted = (None, *off)
    shown = " or ".join("null" if o is None else json.dumps(o) for o in accepted)

    def check(value: Any) -> Any:
        # bool is an int to ==; keep them apart so that best_of=True or echo=0 is not taken for "off".
        if not any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in accepted):
            raise PydanticCustomError(
                "not_implemented", "brigade does not implement it; leave the field out (or send {off})", {"off": shown}
            )
        return value

    return AfterValidator(check)


# Fields whose OpenAI (or vLLM) name and meaning are the wire contract's: copied onto the request as they are.
PASSED_ON = (
    "temperature",
    "top_p",
    "seed",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "repetition_penalty",
    "priority",
    "prompt_cache_key",
)


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # harmless fields SDKs send (user, store, metadata…) are unused
    prompt_field: ClassVar[str] = "prompt"  # the field that carries the prompt, for an error about it to name

    model: str
    # Unset (or null), as with OpenAI and vLLM: as many as the model's context leaves, up to the deployment's
    # limit. Legacy completions default to 16, as theirs do.
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)  # one request per choice, side by side
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension, as its benchmark clients send it
    # Passed on as they are; the wire contract checks their ranges (and names the field when one is out).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None  # vLLM's
    min_p: float | None = None  # vLLM's
    repetition_penalty: float | None = None  # vLLM's
    priority: int = 0  # vLLM's: lower goes first
    # OpenAI's: the calls with one key go to one worker, which keeps the last one's KV cache for the next
    prompt_cache_key: str | None = None
    functions: Annotated[Any, off_only([])] = None
    function_call: Annotated[Any, off_only("none", "auto")] = None
    response_format: ResponseFormat | None = None  # OpenAI's JSON mode and JSON Schema outputs
    structured_outputs: VllmStructuredOutputs | None = None  # vLLM's
    logit_bias: dict[str, float] | None = None  # token id (as a string, OpenAI's JSON) to its bias
    best_of: Annotated[Any, off_only(1)] = None
    suffix: Annotated[Any, off_only("")] = None
    min_tokens: int | None = None  # vLLM's
    stop_token_ids: list[int] | None = None  # vLLM's
    skip_special_tokens: bool = True  # vLLM's; a parser whose calls start with a special token keeps them
    guided_json: dict[str, Any] | str | None = None  # vLLM's older names for structured_outputs
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    _output: OutputPlan | None = PrivateAttr(default=None)  # output(): planned once per call

    def logprobs_asked(self) -> int | None:
        """The contract's ``logprobs``: how many alternatives per token, None for no log-probabilities."""
        return None

    def prompt_logprobs_asked(self) -> int | None:
        """The contract's ``prompt_logprobs``: the prompt's entries are needed (an echo with logprobs)."""
        return None

    def inputs(self) -> list[dict[str, Any]]:
        """The prompt field of each request to make, before ``n``: one per prompt."""
        raise NotImplementedError

    def echo_asked(self) -> bool:
        """Whether each choice's text starts with its prompt (a legacy completion's ``echo``)."""
        return False

    def use_tool_parser(self, parser: ToolCallParser) -> None:
        """Only chat reads tool calls."""

    @property
    def max_tokens_field(self) -> str:
        """The name the caller used, so a limit error names what they sent."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def output(self) -> OutputPlan:
        """Planned once per call (a schema closed, tools turned into one), then read by each choice, the error
        names and the answer."""
        if self._output is None:
            self._output = self._plan_output()
        return self._output

    def _plan_output(self) -> OutputPlan:
        guided = {
            name: getattr(self, name) for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
        }
        asked = structured_output(
            response_format=self.response_format, structured_outputs=self.structured_outputs, guided=guided
        )
        return OutputPlan(asked, None)

    def fields(self) -> FieldNames:
        """The names this caller used for the fields an ingress error may name."""
        asked = self.output().structured
        return FieldNames(
            max_tokens=self.max_tokens_field,
            prompt=self.prompt_field,
            structured_output=asked[1] if asked is not None else None,
        )

    def to_requests(self, **inputs: Any) -> list[InferenceRequest]:
        """One wire request per choice (``n``), each its own session so that the choices run side by side (a
        session's requests run one after another). With a seed, choice i samples with seed + i: the choices
        differ and each replays; without one each request's id seeds it. Greedy choices are all the same."""
        first = self.to_request(**inputs)
        seed = first.seed

        def choice(i: int) -> InferenceRequest:
            update: dict[str, Any] = {"request_id": uuid.uuid4().hex, "session_id": uuid.uuid4().hex}
            if seed is not None:
                update["seed"] = (seed + i) % 2**63
            return first.model_copy(update=update)

        return [first, *(choice(i) for i in range(1, self.n))]

    def to_request(self, **inputs: Any) -> InferenceRequest:
        """The wire request; a value the contract refuses raises ValidationError (answered as 422)."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        max_new = self.max_completion_tokens or self.max_tokens
        if self.min_tokens and max_new is not None and self.min_tokens > max_new:  # the contract's check, in our words
            message = f"min_tokens={self.min_tokens} is over {self.max_tokens_field}={max_new}; lower min_tokens"
            raise ApiError(422, message, param="min_tokens")
        asked, calling = self.output()
        keep_special = not self.skip_special_tokens or (calling is not None and calling.keeps_special_tokens)
        return InferenceRequest(
            request_id=uuid.uuid4().hex,
            session_id=uuid.uuid4().hex,
            model=self.model,
            stop=stop,
            **{name: getattr(self, name) for name in PASSED_ON},
            max_new_tokens=max_new,
            logprobs=self.logprobs_asked(),
            prompt_logprobs=self.prompt_logprobs_asked(),
            # their "off" values stay off the wire, so a worker of an earlier release reads the request too
            logit_bias=self.logit_bias or None,
            min_tokens=self.min_tokens or None,
            stop_token_ids=self.stop_token_ids or None,
            skip_special_tokens=False if keep_special else None,
            structured_output=asked[0] if asked is not None else None,
            **inputs,
        )


class CompletionBody(OpenAIBody):
    tools: Annotated[Any, off_only([])] = None  # chat's
    tool_choice: Annotated[Any, off_only("none", "auto")] = None
    # Text, token ids, or a list of either (one choice per prompt and n, prompt-major, as OpenAI numbers them).
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    # The legacy form: a count of alternatives per token (strict: a chat-style true is refused, not taken as 1).
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, strict=True)

    # The prompt's text before the answer's; with logprobs, its tokens' entries first (the first one's null).
    echo: bool = False

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_prompt_shape(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One error naming the four shapes, in place of one per union member that did not match."""
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "prompt_shape",
                "send a string, a list of strings, token ids (a list of integers) or a list of token-id lists",
            ) from None

    def logprobs_asked(self) -> int | None:
        return self.logprobs

    def prompt_logprobs_asked(self) -> int | None:
        return self.logprobs if self.echo else None

    def inputs(self) -> list[dict[str, Any]]:
        if not self.prompt:
            raise ApiError(
                422, "prompt: send a string, token ids, or a list of either; this one is empty", param="prompt"
            )
        prompts: list[str | list[int]]
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            prompts = [self.prompt]  # one text, or one prompt's token ids
        else:
            prompts = list(self.prompt)
        if len(prompts) * self.n > MAX_REQUESTS:
            raise ApiError(
                422,
                f"prompt: {len(prompts)} prompts × n={self.n} is over {MAX_REQUESTS} choices per call; split the call",
                param="prompt",
            )
        return [{"prompt": p} if isinstance(p, str) else {"prompt_token_ids": p} for p in prompts]

    def echo_asked(self) -> bool:
        return self.echo


class ChatBody(OpenAIBody):
    prompt_field: ClassVar[str] = "messages"
    messages: list[OpenAIMessage] = Field(min_length=1)
    tools: list[OpenAITool] | None = None
    parallel_tool_calls: bool | None = None  # false: "required" makes exactly one call
    tool_choice: ToolChoice | None = None  # "required" or a named function forces a call (producer/openai_tools.py)
    _parser: ToolCallParser = PrivateAttr(default="none")  # "auto" is read with it (use_tool_parser)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: Annotated[Any, off_only(False)] = None  # vLLM's chat echo (the last message first): not served
    chat_template_kwargs: TemplateKwargs | None = None  # vLLM's: more variables for the chat template
    add_generation_prompt: Annotated[Any, off_only(True)] = None  # vLLM's: not served
    continue_final_message: Annotated[Any, off_only(False)] = None  # vLLM's: not served

    def inputs(self) -> list[dict[str, Any]]:
        tools = [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None
        # An OpenAI caller holds the conversation: one too long is an error, as OpenAI and vLLM answer it, not
        # a reply to turns the model never saw.
        turn = {"messages": chat_turns(self.messages), "tools": tools, "trim_history": False}
        return [turn | {"chat_template_kwargs": self.chat_template_kwargs}]

    def use_tool_parser(self, parser: ToolCallParser) -> None:
        """The deployment's BRIGADE_TOOL_CALL_PARSER, which decides whether tool_choice "auto" is served."""
        self._parser = parser
        self._output = None

    def _plan_output(self) -> OutputPlan:
        asked = super()._plan_output().structured
        parallel = self.parallel_tool_calls is not False
        forced, calling = plan_tools(
            self.tools, self.tool_choice, structured=asked is not None, parallel=parallel, parser=self._parser
        )
        return OutputPlan((forced, "tool_choice") if forced is not None else asked, calling)

    def logprobs_asked(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise ApiError(
                    422, "top_logprobs: send logprobs: true with it, as OpenAI requires", param="top_logprobs"
                )
            return None
        return self.top_logprobs or 0
