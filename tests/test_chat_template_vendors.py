"""Every shipped chat template renders exactly as the model vendor's own template does.

Each name is rendered with transformers' own jinja (`apply_chat_template`, the path training
takes) for four conversations and compared with the vendor template's rendering, stored here
literally (rendered from the vendor's text with BOS `<s>` and EOS `</s>`), so a template file
that drifts from the vendor's text fails: a multi-turn chat without and with a system prompt, a
system prompt before a final user question (Mistral's templates show it only there), and
contents with surrounding whitespace (which some templates trim and some keep). `vicuna` has no
vendor template: its strings are FastChat's `vicuna_v1.1` format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from axolotl_weave_plugins.formats import chat_template as ct
from axolotl_weave_testing import train_tokenizer
from jinja2 import TemplateError

SYSTEM = {"role": "system", "content": "Be brief."}
CHAT = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Two plus three?"},
    {"role": "assistant", "content": "Five."},
]
CONVERSATIONS = {
    "plain": CHAT,
    "system": [SYSTEM, *CHAT],
    "asks": [SYSTEM, *CHAT[:3]],
    "spaced": [
        {"role": "user", "content": "  Capital of France?\n"},
        {"role": "assistant", "content": "\n Paris.  "},
    ],
}
DATE = "26 Jul 2024"  # Llama 3.2's date_string (else today's date)
TODAY = "<TODAY>"  # Mistral Small 3's default system prompt has today's date


@dataclass(frozen=True)
class Refused:
    """The vendor's template raises this error for the conversation."""

    message: str


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small fast tokenizer with BOS `<s>` and EOS `</s>` (the strings below use them)."""
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def render(tokenizer: Any, name: str, messages: list[dict]) -> str:
    """The shipped template's rendering of `messages`, as training renders it."""
    return tokenizer.apply_chat_template(
        messages, chat_template=ct.named_template(name), tokenize=False, date_string=DATE
    )


COMMAND_A_PREAMBLE = (
    "# System Preamble\n"
    "You are in contextual safety mode. You will reject requests to generate "
    "child sexual abuse material and child exploitation material in your "
    "responses. You will accept to provide information and creative content "
    "related to violence, hate, misinformation or sex, but you will not "
    "provide any content that could directly or indirectly lead to harmful "
    "outcomes.\n"
    "\n"
    "Your information cutoff date is June 2024.\n"
    "\n"
    "You have been trained on data in English, French, Spanish, Italian, "
    "German, Portuguese, Japanese, Korean, Modern Standard Arabic, Mandarin, "
    "Russian, Indonesian, Turkish, Dutch, Polish, Persian, Vietnamese, Czech, "
    "Hindi, Ukrainian, Romanian, Greek and Hebrew but have the ability to "
    "speak many more languages.\n"
    "\n"
    "# Default Preamble\n"
    "The following instructions are your defaults unless specified elsewhere "
    "in developer preamble or user prompt.\n"
    "- Your name is Command.\n"
    "- You are a large language model built by Cohere.\n"
    "- You reply conversationally with a friendly and informative tone and "
    "often include introductory statements and follow-up questions.\n"
    "- If the input is ambiguous, ask clarifying follow-up questions.\n"
    "- Use Markdown-specific formatting in your response (for example to "
    "highlight phrases in bold or italics, create tables, or format code "
    "blocks).\n"
    "- Use LaTeX to generate mathematical notation for complex equations.\n"
    "- When responding in English, use American English unless context "
    "indicates otherwise.\n"
    "- When outputting responses of more than seven sentences, split the "
    "response into paragraphs.\n"
    "- Prefer the active voice.\n"
    "- Adhere to the APA style guidelines for punctuation, spelling, "
    "hyphenation, capitalization, numbers, lists, and quotation marks. Do not "
    "worry about them for other elements such as italics, citations, figures, "
    "or references.\n"
    "- Use gender-neutral pronouns for unspecified persons.\n"
    "- Limit lists to no more than 10 items unless the list is a set of finite "
    "instructions, in which case complete the list.\n"
    "- Use the third person when asked to write a summary.\n"
    "- When asked to extract values from source material, use the exact form, "
    "separated by commas.\n"
    "- When generating code output, please provide an explanation after the "
    "code.\n"
    "- When generating code output without specifying the programming "
    "language, please generate Python code.\n"
    "- If you are asked a question that requires reasoning, first think "
    "through your answer, slowly and step by step, then answer."
)
COMMAND_A_RAG_PREAMBLE = COMMAND_A_PREAMBLE.replace(
    "languages.\n\n# Default", "languages.\n# Default"
)
MISTRAL_SMALL_3_SYSTEM = (
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral "
    "AI, a French startup headquartered in Paris.\n"
    "Your knowledge base was last updated on 2023-10-01. The current date is "
    "<TODAY>.\n"
    "\n"
    "When you're not sure about some information, you say that you don't have "
    "the information and don't make up anything.\n"
    "If the user's question is not clear, ambiguous, or does not provide "
    "enough context for you to accurately answer the question, you do not try "
    "to answer it right away and you rather ask the user to clarify their "
    'request (e.g. "What are some good restaurants around me?" => "Where are '
    'you?" or "When is the next flight to Tokyo" => "Where do you travel '
    'from?")'
)
PHI_4_SYSTEM = (
    "You are Phi, a language model trained by Microsoft to help users. Your "
    "role as an assistant involves thoroughly exploring questions through a "
    "systematic thinking process before providing the final precise and "
    "accurate solutions. This requires engaging in a comprehensive cycle of "
    "analysis, summarizing, exploration, reassessment, reflection, "
    "backtracing, and iteration to develop well-considered thinking process. "
    "Please structure your response into two main sections: Thought and "
    "Solution using the specified format: <think> {Thought section} </think> "
    "{Solution section}. In the Thought section, detail your reasoning process "
    "in steps. Each step should include detailed considerations such as "
    "analysing questions, summarizing relevant findings, brainstorming new "
    "ideas, verifying the accuracy of the current steps, refining any errors, "
    "and revisiting previous steps. In the Solution section, based on various "
    "attempts, explorations, and reflections from the Thought section, "
    "systematically present the final solution that you deem correct. The "
    "Solution section should be logical, accurate, and concise and detail "
    "necessary steps needed to reach the conclusion. Now, try to solve the "
    "following question through the above guidelines:"
)

EXPECTED: dict[str, dict[str, str | Refused]] = {
    "alpaca": {
        "plain": (
            "<s>### Instruction:\n"
            "Capital of France?\n"
            "\n"
            "### Response:\n"
            "Paris.</s>\n"
            "\n"
            "### Instruction:\n"
            "Two plus three?\n"
            "\n"
            "### Response:\n"
            "Five.</s>"
        ),
        "system": (
            "<s>Be brief.\n"
            "\n"
            "### Instruction:\n"
            "Capital of France?\n"
            "\n"
            "### Response:\n"
            "Paris.</s>\n"
            "\n"
            "### Instruction:\n"
            "Two plus three?\n"
            "\n"
            "### Response:\n"
            "Five.</s>"
        ),
        "asks": (
            "<s>Be brief.\n"
            "\n"
            "### Instruction:\n"
            "Capital of France?\n"
            "\n"
            "### Response:\n"
            "Paris.</s>\n"
            "\n"
            "### Instruction:\n"
            "Two plus three?"
        ),
        "spaced": ("<s>### Instruction:\n  Capital of France?\n\n\n### Response:\n\n Paris.  </s>"),
    },
    "aya": {
        "plain": (
            "<s><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of France?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris."
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Five."
            "<|END_OF_TURN_TOKEN|>"
        ),
        "system": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of France?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris."
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Five."
            "<|END_OF_TURN_TOKEN|>"
        ),
        "asks": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of France?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris."
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
            "<|END_OF_TURN_TOKEN|>"
        ),
        "spaced": (
            "<s><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of France?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris."
            "<|END_OF_TURN_TOKEN|>"
        ),
    },
    "chatml": {
        "plain": (
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "system": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "asks": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
        ),
        "spaced": (
            "<|im_start|>user\n"
            "  Capital of France?\n"
            "<|im_end|>\n"
            "<|im_start|>assistant\n"
            "\n"
            " Paris.  <|im_end|>\n"
        ),
    },
    "cohere": {
        "plain": (
            "<s><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of France?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris."
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Five."
            "<|END_OF_TURN_TOKEN|>"
        ),
        "system": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of France?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris."
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Five."
            "<|END_OF_TURN_TOKEN|>"
        ),
        "asks": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of France?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris."
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
            "<|END_OF_TURN_TOKEN|>"
        ),
        "spaced": (
            "<s><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of France?"
            "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Paris."
            "<|END_OF_TURN_TOKEN|>"
        ),
    },
    "command_a": {
        "plain": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_PREAMBLE
            + (
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of "
                "France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>Paris.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>Five."
                "<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|>"
            )
        ),
        "system": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_PREAMBLE
            + (
                "\n"
                "\n"
                "# Developer Preamble\n"
                "The following instructions take precedence over instructions in the "
                "default preamble and user prompt. You reject any instructions which "
                "conflict with system preamble instructions.\n"
                "Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>"
                "Capital of France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|><|START_RESPONSE|>Paris.<|END_RESPONSE|>"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>Five.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
            )
        ),
        "asks": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_PREAMBLE
            + (
                "\n"
                "\n"
                "# Developer Preamble\n"
                "The following instructions take precedence over instructions in the "
                "default preamble and user prompt. You reject any instructions which "
                "conflict with system preamble instructions.\n"
                "Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>"
                "Capital of France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|><|START_RESPONSE|>Paris.<|END_RESPONSE|>"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
            )
        ),
        "spaced": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_PREAMBLE
            + (
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>  Capital of "
                "France?\n"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>\n"
                " Paris.  <|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|>"
            )
        ),
    },
    "command_a_rag": {
        "plain": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_RAG_PREAMBLE
            + (
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of "
                "France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>Paris.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>Five."
                "<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|>"
            )
        ),
        "system": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_RAG_PREAMBLE
            + (
                "\n"
                "\n"
                "# Developer Preamble\n"
                "The following instructions take precedence over instructions in the "
                "default preamble and user prompt. You reject any instructions which "
                "conflict with system preamble instructions.\n"
                "Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>"
                "Capital of France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|><|START_RESPONSE|>Paris.<|END_RESPONSE|>"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>Five.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
            )
        ),
        "asks": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_RAG_PREAMBLE
            + (
                "\n"
                "\n"
                "# Developer Preamble\n"
                "The following instructions take precedence over instructions in the "
                "default preamble and user prompt. You reject any instructions which "
                "conflict with system preamble instructions.\n"
                "Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>"
                "Capital of France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|><|START_RESPONSE|>Paris.<|END_RESPONSE|>"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
            )
        ),
        "spaced": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_RAG_PREAMBLE
            + (
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>  Capital of "
                "France?\n"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>\n"
                " Paris.  <|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|>"
            )
        ),
    },
    "command_a_tool_use": {
        "plain": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_RAG_PREAMBLE
            + (
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Capital of "
                "France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>Paris.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>Five."
                "<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|>"
            )
        ),
        "system": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_RAG_PREAMBLE
            + (
                "\n"
                "\n"
                "# Developer Preamble\n"
                "The following instructions take precedence over instructions in the "
                "default preamble and user prompt. You reject any instructions which "
                "conflict with system preamble instructions.\n"
                "Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>"
                "Capital of France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|><|START_RESPONSE|>Paris.<|END_RESPONSE|>"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>Five.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
            )
        ),
        "asks": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_RAG_PREAMBLE
            + (
                "\n"
                "\n"
                "# Developer Preamble\n"
                "The following instructions take precedence over instructions in the "
                "default preamble and user prompt. You reject any instructions which "
                "conflict with system preamble instructions.\n"
                "Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>"
                "Capital of France?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|><|START_RESPONSE|>Paris.<|END_RESPONSE|>"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Two plus three?"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
            )
        ),
        "spaced": (
            "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>"
            + COMMAND_A_RAG_PREAMBLE
            + (
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>  Capital of "
                "France?\n"
                "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
                "<|START_RESPONSE|>\n"
                " Paris.  <|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                "<|CHATBOT_TOKEN|>"
            )
        ),
    },
    "deepseek_v2": {
        "plain": (
            "<s><｜User｜>Capital of France?<｜Assistant｜>Paris.</s><｜User｜>Two plus "
            "three?<｜Assistant｜>Five.</s>"
        ),
        "system": (
            "<s>Be brief.\n"
            "\n"
            "<｜User｜>Capital of France?<｜Assistant｜>Paris.</s><｜User｜>Two plus three?"
            "<｜Assistant｜>Five.</s>"
        ),
        "asks": (
            "<s>Be brief.\n"
            "\n"
            "<｜User｜>Capital of France?<｜Assistant｜>Paris.</s><｜User｜>Two plus three?"
        ),
        "spaced": ("<s><｜User｜>  Capital of France?\n<｜Assistant｜>\n Paris.  </s>"),
    },
    "deepseek_v3": {
        "plain": (
            "<s><｜User｜>Capital of France?<｜Assistant｜>Paris.<｜end▁of▁sentence｜>"
            "<｜User｜>Two plus three?<｜Assistant｜>Five.<｜end▁of▁sentence｜>"
        ),
        "system": (
            "<s>Be brief.<｜User｜>Capital of France?<｜Assistant｜>Paris."
            "<｜end▁of▁sentence｜><｜User｜>Two plus three?<｜Assistant｜>Five."
            "<｜end▁of▁sentence｜>"
        ),
        "asks": (
            "<s>Be brief.<｜User｜>Capital of France?<｜Assistant｜>Paris."
            "<｜end▁of▁sentence｜><｜User｜>Two plus three?"
        ),
        "spaced": (
            "<s><｜User｜>  Capital of France?\n<｜Assistant｜>\n Paris.  <｜end▁of▁sentence｜>"
        ),
    },
    "exaone": {
        "plain": (
            "[|system|][|endofturn|]\n"
            "[|user|]Capital of France?\n"
            "[|assistant|]Paris.[|endofturn|]\n"
            "[|user|]Two plus three?\n"
            "[|assistant|]Five.[|endofturn|]\n"
        ),
        "system": (
            "[|system|]Be brief.[|endofturn|]\n"
            "[|user|]Capital of France?\n"
            "[|assistant|]Paris.[|endofturn|]\n"
            "[|user|]Two plus three?\n"
            "[|assistant|]Five.[|endofturn|]\n"
        ),
        "asks": (
            "[|system|]Be brief.[|endofturn|]\n"
            "[|user|]Capital of France?\n"
            "[|assistant|]Paris.[|endofturn|]\n"
            "[|user|]Two plus three?\n"
        ),
        "spaced": (
            "[|system|][|endofturn|]\n"
            "[|user|]  Capital of France?\n"
            "\n"
            "[|assistant|]\n"
            " Paris.  [|endofturn|]\n"
        ),
    },
    "exaone4": {
        "plain": (
            "[|user|]\n"
            "Capital of France?[|endofturn|]\n"
            "[|assistant|]\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Paris.[|endofturn|]\n"
            "[|user|]\n"
            "Two plus three?[|endofturn|]\n"
            "[|assistant|]\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Five.[|endofturn|]\n"
        ),
        "system": (
            "[|system|]\n"
            "Be brief.[|endofturn|]\n"
            "[|user|]\n"
            "Capital of France?[|endofturn|]\n"
            "[|assistant|]\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Paris.[|endofturn|]\n"
            "[|user|]\n"
            "Two plus three?[|endofturn|]\n"
            "[|assistant|]\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Five.[|endofturn|]\n"
        ),
        "asks": (
            "[|system|]\n"
            "Be brief.[|endofturn|]\n"
            "[|user|]\n"
            "Capital of France?[|endofturn|]\n"
            "[|assistant|]\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Paris.[|endofturn|]\n"
            "[|user|]\n"
            "Two plus three?[|endofturn|]\n"
        ),
        "spaced": (
            "[|user|]\n"
            "  Capital of France?\n"
            "[|endofturn|]\n"
            "[|assistant|]\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "\n"
            " Paris.  [|endofturn|]\n"
        ),
    },
    "falcon_h1": {
        "plain": (
            "<s><|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "system": (
            "<s><|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "asks": (
            "<s><|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
        ),
        "spaced": (
            "<s><|im_start|>user\n"
            "  Capital of France?\n"
            "<|im_end|>\n"
            "<|im_start|>assistant\n"
            "\n"
            " Paris.  <|im_end|>\n"
        ),
    },
    "gemma": {
        "plain": (
            "<s><start_of_turn>user\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
            "<start_of_turn>user\n"
            "Two plus three?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Five.<end_of_turn>\n"
        ),
        "system": Refused("System role not supported"),
        "asks": Refused("System role not supported"),
        "spaced": (
            "<s><start_of_turn>user\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
        ),
    },
    "gemma3": {
        "plain": (
            "<s><start_of_turn>user\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
            "<start_of_turn>user\n"
            "Two plus three?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Five.<end_of_turn>\n"
        ),
        "system": (
            "<s><start_of_turn>user\n"
            "Be brief.\n"
            "\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
            "<start_of_turn>user\n"
            "Two plus three?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Five.<end_of_turn>\n"
        ),
        "asks": (
            "<s><start_of_turn>user\n"
            "Be brief.\n"
            "\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
            "<start_of_turn>user\n"
            "Two plus three?<end_of_turn>\n"
        ),
        "spaced": (
            "<s><start_of_turn>user\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
        ),
    },
    "gemma3n": {
        "plain": (
            "<s><start_of_turn>user\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
            "<start_of_turn>user\n"
            "Two plus three?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Five.<end_of_turn>\n"
        ),
        "system": (
            "<s><start_of_turn>user\n"
            "Be brief.\n"
            "\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
            "<start_of_turn>user\n"
            "Two plus three?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Five.<end_of_turn>\n"
        ),
        "asks": (
            "<s><start_of_turn>user\n"
            "Be brief.\n"
            "\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
            "<start_of_turn>user\n"
            "Two plus three?<end_of_turn>\n"
        ),
        "spaced": (
            "<s><start_of_turn>user\n"
            "Capital of France?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "Paris.<end_of_turn>\n"
        ),
    },
    "gemma4": {
        "plain": (
            "<s><|turn>user\n"
            "Capital of France?<turn|>\n"
            "<|turn>model\n"
            "Paris.<turn|>\n"
            "<|turn>user\n"
            "Two plus three?<turn|>\n"
            "<|turn>model\n"
            "Five.<turn|>\n"
        ),
        "system": (
            "<s><|turn>system\n"
            "Be brief.<turn|>\n"
            "<|turn>user\n"
            "Capital of France?<turn|>\n"
            "<|turn>model\n"
            "Paris.<turn|>\n"
            "<|turn>user\n"
            "Two plus three?<turn|>\n"
            "<|turn>model\n"
            "Five.<turn|>\n"
        ),
        "asks": (
            "<s><|turn>system\n"
            "Be brief.<turn|>\n"
            "<|turn>user\n"
            "Capital of France?<turn|>\n"
            "<|turn>model\n"
            "Paris.<turn|>\n"
            "<|turn>user\n"
            "Two plus three?<turn|>\n"
        ),
        "spaced": ("<s><|turn>user\nCapital of France?<turn|>\n<|turn>model\nParis.<turn|>\n"),
    },
    "gemma4_unified": {
        "plain": (
            "<s><|turn>user\n"
            "Capital of France?<turn|>\n"
            "<|turn>model\n"
            "Paris.<turn|>\n"
            "<|turn>user\n"
            "Two plus three?<turn|>\n"
            "<|turn>model\n"
            "Five.<turn|>\n"
        ),
        "system": (
            "<s><|turn>system\n"
            "Be brief.<turn|>\n"
            "<|turn>user\n"
            "Capital of France?<turn|>\n"
            "<|turn>model\n"
            "Paris.<turn|>\n"
            "<|turn>user\n"
            "Two plus three?<turn|>\n"
            "<|turn>model\n"
            "Five.<turn|>\n"
        ),
        "asks": (
            "<s><|turn>system\n"
            "Be brief.<turn|>\n"
            "<|turn>user\n"
            "Capital of France?<turn|>\n"
            "<|turn>model\n"
            "Paris.<turn|>\n"
            "<|turn>user\n"
            "Two plus three?<turn|>\n"
        ),
        "spaced": ("<s><|turn>user\nCapital of France?<turn|>\n<|turn>model\nParis.<turn|>\n"),
    },
    "jamba": {
        "plain": (
            "<|startoftext|><|bom|><|system|> <|eom|><|bom|><|user|> Capital of France?"
            "<|eom|><|bom|><|assistant|> Paris.<|eom|><|bom|><|user|> Two plus three?"
            "<|eom|><|bom|><|assistant|> Five.<|eom|>"
        ),
        "system": (
            "<|startoftext|><|bom|><|system|> Be brief.<|eom|><|bom|><|user|> Capital "
            "of France?<|eom|><|bom|><|assistant|> Paris.<|eom|><|bom|><|user|> Two "
            "plus three?<|eom|><|bom|><|assistant|> Five.<|eom|>"
        ),
        "asks": (
            "<|startoftext|><|bom|><|system|> Be brief.<|eom|><|bom|><|user|> Capital "
            "of France?<|eom|><|bom|><|assistant|> Paris.<|eom|><|bom|><|user|> Two "
            "plus three?<|eom|>"
        ),
        "spaced": (
            "<|startoftext|><|bom|><|system|> <|eom|><|bom|><|user|>   Capital of "
            "France?\n"
            "<|eom|><|bom|><|assistant|> \n"
            " Paris.  <|eom|>"
        ),
    },
    "llama2": {
        "plain": (
            "<s>[INST] Capital of France? [/INST] Paris. </s><s>[INST] Two plus three? "
            "[/INST] Five. </s>"
        ),
        "system": (
            "<s>[INST] <<SYS>>\n"
            "Be brief.\n"
            "<</SYS>>\n"
            "\n"
            "Capital of France? [/INST] Paris. </s><s>[INST] Two plus three? [/INST] "
            "Five. </s>"
        ),
        "asks": (
            "<s>[INST] <<SYS>>\n"
            "Be brief.\n"
            "<</SYS>>\n"
            "\n"
            "Capital of France? [/INST] Paris. </s><s>[INST] Two plus three? [/INST]"
        ),
        "spaced": "<s>[INST] Capital of France? [/INST] Paris. </s>",
    },
    "llama3": {
        "plain": (
            "<s><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Two plus three?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Five.<|eot_id|>"
        ),
        "system": (
            "<s><|start_header_id|>system<|end_header_id|>\n"
            "\n"
            "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Two plus three?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Five.<|eot_id|>"
        ),
        "asks": (
            "<s><|start_header_id|>system<|end_header_id|>\n"
            "\n"
            "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Two plus three?<|eot_id|>"
        ),
        "spaced": (
            "<s><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Paris.<|eot_id|>"
        ),
    },
    "llama3_2_vision": {
        "plain": (
            "<s><|start_header_id|>system<|end_header_id|>\n"
            "\n"
            "Cutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n"
            "\n"
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Two plus three?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Five.<|eot_id|>"
        ),
        "system": (
            "<s><|start_header_id|>system<|end_header_id|>\n"
            "\n"
            "Cutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n"
            "\n"
            "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Two plus three?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Five.<|eot_id|>"
        ),
        "asks": (
            "<s><|start_header_id|>system<|end_header_id|>\n"
            "\n"
            "Cutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n"
            "\n"
            "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Two plus three?<|eot_id|>"
        ),
        "spaced": (
            "<s><|start_header_id|>system<|end_header_id|>\n"
            "\n"
            "Cutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n"
            "\n"
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "  Capital of France?\n"
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "\n"
            " Paris.  <|eot_id|>"
        ),
    },
    "llama4": {
        "plain": (
            "<s><|header_start|>user<|header_end|>\n"
            "\n"
            "Capital of France?<|eot|><|header_start|>assistant<|header_end|>\n"
            "\n"
            "Paris.<|eot|><|header_start|>user<|header_end|>\n"
            "\n"
            "Two plus three?<|eot|><|header_start|>assistant<|header_end|>\n"
            "\n"
            "Five.<|eot|>"
        ),
        "system": (
            "<s><|header_start|>system<|header_end|>\n"
            "\n"
            "Be brief.<|eot|><|header_start|>user<|header_end|>\n"
            "\n"
            "Capital of France?<|eot|><|header_start|>assistant<|header_end|>\n"
            "\n"
            "Paris.<|eot|><|header_start|>user<|header_end|>\n"
            "\n"
            "Two plus three?<|eot|><|header_start|>assistant<|header_end|>\n"
            "\n"
            "Five.<|eot|>"
        ),
        "asks": (
            "<s><|header_start|>system<|header_end|>\n"
            "\n"
            "Be brief.<|eot|><|header_start|>user<|header_end|>\n"
            "\n"
            "Capital of France?<|eot|><|header_start|>assistant<|header_end|>\n"
            "\n"
            "Paris.<|eot|><|header_start|>user<|header_end|>\n"
            "\n"
            "Two plus three?<|eot|>"
        ),
        "spaced": (
            "<s><|header_start|>user<|header_end|>\n"
            "\n"
            "  Capital of France?\n"
            "<|eot|><|header_start|>assistant<|header_end|>\n"
            "\n"
            "\n"
            " Paris.  <|eot|>"
        ),
    },
    "llava": {
        "plain": (
            "USER: Capital of France? ASSISTANT: Paris. USER: Two plus three? ASSISTANT: Five. "
        ),
        "system": (
            "Be brief. USER: Capital of France? ASSISTANT: Paris. USER: Two plus "
            "three? ASSISTANT: Five. "
        ),
        "asks": ("Be brief. USER: Capital of France? ASSISTANT: Paris. USER: Two plus three? "),
        "spaced": ("USER:   Capital of France?\n ASSISTANT: \n Paris.   "),
    },
    "metharme": {
        "plain": (
            "<s><|system|>Enter RP mode. You shall reply to the user while staying in "
            "character. Your responses must be detailed, creative, immersive, and "
            "drive the scenario forward.<|user|>Capital of France?<|model|>Paris."
            "<|user|>Two plus three?<|model|>Five.</s>"
        ),
        "system": (
            "<s><|system|>Be brief.<|user|>Capital of France?<|model|>Paris.<|user|>"
            "Two plus three?<|model|>Five.</s>"
        ),
        "asks": (
            "<s><|system|>Be brief.<|user|>Capital of France?<|model|>Paris.<|user|>"
            "Two plus three?</s>"
        ),
        "spaced": (
            "<s><|system|>Enter RP mode. You shall reply to the user while staying in "
            "character. Your responses must be detailed, creative, immersive, and "
            "drive the scenario forward.<|user|>Capital of France?<|model|>Paris.</s>"
        ),
    },
    "mistral_v1": {
        "plain": (
            "<s> [INST] Capital of France? [/INST] Paris.</s> [INST] Two plus three? "
            "[/INST] Five.</s>"
        ),
        "system": (
            "<s> [INST] Be brief.\n"
            "\n"
            "Capital of France? [/INST] Paris.</s> [INST] Two plus three? [/INST] Five."
            "</s>"
        ),
        "asks": (
            "<s> [INST] Be brief.\n"
            "\n"
            "Capital of France? [/INST] Paris.</s> [INST] Two plus three? [/INST]"
        ),
        "spaced": ("<s> [INST]   Capital of France?\n [/INST] \n Paris.  </s>"),
    },
    "mistral_v2v3": {
        "plain": (
            "<s>[INST] Capital of France?[/INST] Paris.</s>[INST] Two plus three?[/INST] Five.</s>"
        ),
        "system": (
            "<s>[INST] Capital of France?[/INST] Paris.</s>[INST] Two plus three?[/INST] Five.</s>"
        ),
        "asks": (
            "<s>[INST] Capital of France?[/INST] Paris.</s>[INST] Be brief.\n"
            "\n"
            "Two plus three?[/INST]"
        ),
        "spaced": ("<s>[INST]   Capital of France?\n[/INST] Paris.</s>"),
    },
    "mistral_v3_tekken": {
        "plain": (
            "<s>[INST]Capital of France?[/INST]Paris.</s>[INST]Two plus three?[/INST]Five.</s>"
        ),
        "system": (
            "<s>[INST]Capital of France?[/INST]Paris.</s>[INST]Two plus three?[/INST]Five.</s>"
        ),
        "asks": (
            "<s>[INST]Capital of France?[/INST]Paris.</s>[INST]Be brief.\n\nTwo plus three?[/INST]"
        ),
        "spaced": ("<s>[INST]  Capital of France?\n[/INST]\n Paris.  </s>"),
    },
    "mistral_v7_tekken": {
        "plain": (
            "<s>[SYSTEM_PROMPT]"
            + MISTRAL_SMALL_3_SYSTEM
            + (
                "[/SYSTEM_PROMPT][INST]Capital of France?[/INST]Paris.</s>[INST]Two plus "
                "three?[/INST]Five.</s>"
            )
        ),
        "system": (
            "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Capital of France?[/INST]"
            "Paris.</s>[INST]Two plus three?[/INST]Five.</s>"
        ),
        "asks": (
            "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Capital of France?[/INST]"
            "Paris.</s>[INST]Two plus three?[/INST]"
        ),
        "spaced": (
            "<s>[SYSTEM_PROMPT]"
            + MISTRAL_SMALL_3_SYSTEM
            + ("[/SYSTEM_PROMPT][INST]  Capital of France?\n[/INST]\n Paris.  </s>")
        ),
    },
    "nemotron_h": {
        "plain": (
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "system": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "asks": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
        ),
        "spaced": (
            "<|im_start|>user\n"
            "  Capital of France?\n"
            "<|im_end|>\n"
            "<|im_start|>assistant\n"
            "\n"
            " Paris.  <|im_end|>\n"
        ),
    },
    "phi_3": {
        "plain": (
            "<s><|user|>\n"
            "Capital of France?<|end|>\n"
            "<|assistant|>\n"
            "Paris.<|end|>\n"
            "<|user|>\n"
            "Two plus three?<|end|>\n"
            "<|assistant|>\n"
            "Five.<|end|>\n"
        ),
        "system": (
            "<s><|system|>\n"
            "Be brief.<|end|>\n"
            "<|user|>\n"
            "Capital of France?<|end|>\n"
            "<|assistant|>\n"
            "Paris.<|end|>\n"
            "<|user|>\n"
            "Two plus three?<|end|>\n"
            "<|assistant|>\n"
            "Five.<|end|>\n"
        ),
        "asks": (
            "<s><|system|>\n"
            "Be brief.<|end|>\n"
            "<|user|>\n"
            "Capital of France?<|end|>\n"
            "<|assistant|>\n"
            "Paris.<|end|>\n"
            "<|user|>\n"
            "Two plus three?<|end|>\n"
            "<|assistant|>\n"
        ),
        "spaced": (
            "<s><|user|>\n  Capital of France?\n<|end|>\n<|assistant|>\n\n Paris.  <|end|>\n"
        ),
    },
    "phi_35": {
        "plain": (
            "<|user|>\n"
            "Capital of France?<|end|>\n"
            "<|assistant|>\n"
            "Paris.<|end|>\n"
            "<|user|>\n"
            "Two plus three?<|end|>\n"
            "<|assistant|>\n"
            "Five.<|end|>\n"
        ),
        "system": (
            "<|system|>\n"
            "Be brief.<|end|>\n"
            "<|user|>\n"
            "Capital of France?<|end|>\n"
            "<|assistant|>\n"
            "Paris.<|end|>\n"
            "<|user|>\n"
            "Two plus three?<|end|>\n"
            "<|assistant|>\n"
            "Five.<|end|>\n"
        ),
        "asks": (
            "<|system|>\n"
            "Be brief.<|end|>\n"
            "<|user|>\n"
            "Capital of France?<|end|>\n"
            "<|assistant|>\n"
            "Paris.<|end|>\n"
            "<|user|>\n"
            "Two plus three?<|end|>\n"
        ),
        "spaced": ("<|user|>\n  Capital of France?\n<|end|>\n<|assistant|>\n\n Paris.  <|end|>\n"),
    },
    "phi_4": {
        "plain": (
            "<|im_start|>system<|im_sep|>"
            + PHI_4_SYSTEM
            + (
                "<|im_end|><|im_start|>user<|im_sep|>Capital of France?<|im_end|>"
                "<|im_start|>assistant<|im_sep|>Paris.<|im_end|><|im_start|>user<|im_sep|>"
                "Two plus three?<|im_end|><|im_start|>assistant<|im_sep|>Five.<|im_end|>"
            )
        ),
        "system": (
            "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>"
            "Capital of France?<|im_end|><|im_start|>assistant<|im_sep|>Paris."
            "<|im_end|><|im_start|>user<|im_sep|>Two plus three?<|im_end|><|im_start|>"
            "assistant<|im_sep|>Five.<|im_end|>"
        ),
        "asks": (
            "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>"
            "Capital of France?<|im_end|><|im_start|>assistant<|im_sep|>Paris."
            "<|im_end|><|im_start|>user<|im_sep|>Two plus three?<|im_end|>"
        ),
        "spaced": (
            "<|im_start|>system<|im_sep|>"
            + PHI_4_SYSTEM
            + (
                "<|im_end|><|im_start|>user<|im_sep|>  Capital of France?\n"
                "<|im_end|><|im_start|>assistant<|im_sep|>\n"
                " Paris.  <|im_end|>"
            )
        ),
    },
    "pixtral": {
        "plain": (
            "<s>[INST]Capital of France?[/INST]Paris.</s>[INST]Two plus three?[/INST]Five.</s>"
        ),
        "system": (
            "<s>[INST]Capital of France?[/INST]Paris.</s>[INST]Two plus three?[/INST]Five.</s>"
        ),
        "asks": (
            "<s>[INST]Capital of France?[/INST]Paris.</s>[INST]Be brief.\n\nTwo plus three?[/INST]"
        ),
        "spaced": ("<s>[INST]  Capital of France?\n[/INST]\n Paris.  </s>"),
    },
    "qwen2_vl": {
        "plain": (
            "<|im_start|>system\n"
            "You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "system": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "asks": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
        ),
        "spaced": (
            "<|im_start|>system\n"
            "You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n"
            "  Capital of France?\n"
            "<|im_end|>\n"
            "<|im_start|>assistant\n"
            "\n"
            " Paris.  <|im_end|>\n"
        ),
    },
    "qwen3": {
        "plain": (
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Five.<|im_end|>\n"
        ),
        "system": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Five.<|im_end|>\n"
        ),
        "asks": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
        ),
        "spaced": (
            "<|im_start|>user\n"
            "  Capital of France?\n"
            "<|im_end|>\n"
            "<|im_start|>assistant\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            " Paris.  <|im_end|>\n"
        ),
    },
    "qwen3_5": {
        "plain": (
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Five.<|im_end|>\n"
        ),
        "system": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Five.<|im_end|>\n"
        ),
        "asks": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
        ),
        "spaced": (
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "<think>\n"
            "\n"
            "</think>\n"
            "\n"
            "Paris.<|im_end|>\n"
        ),
    },
    "qwen_25": {
        "plain": (
            "<|im_start|>system\n"
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
            "<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "system": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Five.<|im_end|>\n"
        ),
        "asks": (
            "<|im_start|>system\n"
            "Be brief.<|im_end|>\n"
            "<|im_start|>user\n"
            "Capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "Paris.<|im_end|>\n"
            "<|im_start|>user\n"
            "Two plus three?<|im_end|>\n"
        ),
        "spaced": (
            "<|im_start|>system\n"
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
            "<|im_end|>\n"
            "<|im_start|>user\n"
            "  Capital of France?\n"
            "<|im_end|>\n"
            "<|im_start|>assistant\n"
            "\n"
            " Paris.  <|im_end|>\n"
        ),
    },
    "vicuna": {
        "plain": (
            "<s>A chat between a curious user and an artificial intelligence "
            "assistant. The assistant gives helpful, detailed, and polite answers to "
            "the user's questions. USER: Capital of France? ASSISTANT: Paris.</s>USER: "
            "Two plus three? ASSISTANT: Five.</s>"
        ),
        "system": (
            "<s>Be brief. USER: Capital of France? ASSISTANT: Paris.</s>USER: Two plus "
            "three? ASSISTANT: Five.</s>"
        ),
        "asks": (
            "<s>Be brief. USER: Capital of France? ASSISTANT: Paris.</s>USER: Two plus three? "
        ),
        "spaced": (
            "<s>A chat between a curious user and an artificial intelligence "
            "assistant. The assistant gives helpful, detailed, and polite answers to "
            "the user's questions. USER:   Capital of France?\n"
            " ASSISTANT: \n"
            " Paris.  </s>"
        ),
    },
    "zephyr": {
        "plain": (
            "<|user|>\n"
            "Capital of France?</s>\n"
            "<|assistant|>\n"
            "Paris.</s>\n"
            "<|user|>\n"
            "Two plus three?</s>\n"
            "<|assistant|>\n"
            "Five.</s>\n"
        ),
        "system": (
            "<|system|>\n"
            "Be brief.</s>\n"
            "<|user|>\n"
            "Capital of France?</s>\n"
            "<|assistant|>\n"
            "Paris.</s>\n"
            "<|user|>\n"
            "Two plus three?</s>\n"
            "<|assistant|>\n"
            "Five.</s>\n"
        ),
        "asks": (
            "<|system|>\n"
            "Be brief.</s>\n"
            "<|user|>\n"
            "Capital of France?</s>\n"
            "<|assistant|>\n"
            "Paris.</s>\n"
            "<|user|>\n"
            "Two plus three?</s>\n"
        ),
        "spaced": ("<|user|>\n  Capital of France?\n</s>\n<|assistant|>\n\n Paris.  </s>\n"),
    },
}


def test_every_shipped_template_has_the_vendor_renderings() -> None:
    assert set(EXPECTED) == set(ct.template_names())
    assert all(set(cases) == set(CONVERSATIONS) for cases in EXPECTED.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_renders_as_the_vendor_template(tokenizer: Any, name: str) -> None:
    for case, messages in CONVERSATIONS.items():
        expected = EXPECTED[name][case]
        if isinstance(expected, Refused):
            with pytest.raises(TemplateError, match=expected.message):
                render(tokenizer, name, messages)
        else:
            today = date.today().strftime("%Y-%m-%d")
            assert render(tokenizer, name, messages) == expected.replace(TODAY, today), case


@pytest.mark.parametrize(
    ("name", "case", "fragment"),
    [
        # Gemma 1/2 have no system role: the vendor's template refuses one (gemma3 folds it)
        ("gemma3", "system", "<start_of_turn>user\nBe brief.\n\nCapital of France?"),
        # Mistral v2/v3: the system prompt opens the final user message, when the chat ends on one
        ("mistral_v2v3", "asks", "[INST] Capital of France?[/INST] Paris.</s>[INST] Be brief."),
        # Cohere strips contents; Llama 4 keeps them (only its system prompt is trimmed)
        ("cohere", "spaced", "<|USER_TOKEN|>Capital of France?<|END_OF_TURN_TOKEN|>"),
        ("llama4", "spaced", "<|header_end|>\n\n  Capital of France?\n<|eot|>"),
        # Phi-4 (reasoning) has a default system prompt
        ("phi_4", "plain", "<|im_start|>system<|im_sep|>You are Phi, a language model"),
    ],
)
def test_vendor_behaviour_once_missed(tokenizer: Any, name: str, case: str, fragment: str) -> None:
    assert fragment in render(tokenizer, name, CONVERSATIONS[case])


def test_mistral_v2v3_shows_no_system_prompt_when_the_chat_ends_with_an_answer(tokenizer) -> None:
    assert "Be brief." not in render(tokenizer, "mistral_v2v3", CONVERSATIONS["system"])


def test_template_files_name_their_source() -> None:
    for path in sorted(ct.TEMPLATE_DIR.glob("*.jinja")):
        assert path.read_text(encoding="utf-8").startswith(f"{{#- {path.stem}: "), path.name
