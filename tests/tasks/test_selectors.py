"""The reservation's input estimate: an upper bound for any language."""

from __future__ import annotations

import pytest

from providers.clients.base import GenerateRequest, ImageInput
from tasks.selectors import estimate_tokens
from tests.tasks.conftest import EXTRACT, call, db_with_threads, usage_rows

# Chinese, Japanese, Korean, an emoji sequence (a person, a zero-width joiner, a laptop) and a flag.
CJK_AND_EMOJI = "招聘：柏林的Python开发人员。ベルリンの求人。베를린 채용 🧑‍💻🚀🇩🇪"


def test_the_input_estimate_counts_every_utf8_byte_of_cjk_text_and_emoji():
    request = GenerateRequest(system="Extract the posting.", user_text=CJK_AND_EMOJI, max_output_tokens=100)

    estimate = estimate_tokens(request, image_allowance=1600)

    # No byte-level BPE tokenizer makes more tokens of a text than it has UTF-8 bytes.
    assert estimate == len("Extract the posting.") + len(CJK_AND_EMOJI.encode()) + 100
    assert len(CJK_AND_EMOJI.encode()) > 2 * len(CJK_AND_EMOJI)  # characters / 4 would have been an eighth of it


def test_the_input_estimate_adds_the_image_allowance():
    image = ImageInput(data=b"\x89PNG", mime_type="image/png")
    request = GenerateRequest(system="", user_text="é", image=image, max_output_tokens=10)

    assert estimate_tokens(request, image_allowance=1600) == 2 + 1600 + 10


@db_with_threads
def test_cjk_text_that_could_pass_its_limit_is_refused_before_the_call(task_config, auth):
    text = "柏林的Python开发人员，全职。" * 200  # 3,400 characters, 9,800 bytes
    # Enough for characters / 4 of the prompt and the output cap (2,048), not for the prompt's bytes.
    config = task_config("openai", daily_token_limit=6000)

    response = call(EXTRACT, {"text": text}, headers=auth)

    assert response.status_code == 429, response.content
    assert response.json()["error"]["type"] == "token_limit_reached"
    assert usage_rows(provider_config=config) == []
    assert call(EXTRACT, {"text": "Python developer at Acme, Berlin."}, headers=auth).status_code == 200


@pytest.mark.parametrize("text", ["plain ASCII", "", "\u00e9\u00e8", CJK_AND_EMOJI])
def test_the_estimate_never_undercounts_the_bytes(text):
    request = GenerateRequest(system="", user_text=text, max_output_tokens=0)

    assert estimate_tokens(request, image_allowance=0) == len(text.encode())
