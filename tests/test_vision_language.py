"""Vision-language fine-tuning (`processor_type`): conversations with images are tokenized by
the model's processor, their assistant turns trained, and the batches carry the pixels; on tiny
LLaVA and Gemma 3 models built from their real configs with random weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, DataError, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_testing import (
    run_weave,
    run_weave_in_process,
    start_serve,
    train_with,
    write_config,
    write_jsonl,
)
from safetensors.torch import load_file

TEMPLATES = Path(__file__).parents[1] / "plugins/axolotl_weave_plugins/formats/chat_templates"
COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def build_tiny_llava(folder: Path, tiny_llama_dir: Path) -> Path:
    """LLaVA 1.5's architecture (CLIP vision tower, projector, llama) with random weights, its
    processor (32-pixel images, 16 image tokens each) and Axolotl's llava template."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=(TEMPLATES / "llava.jinja").read_text(),
    )
    config = LlavaConfig(
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_gemma3(folder: Path, tiny_llama_dir: Path) -> Path:
    """Gemma 3's multimodal architecture (SigLIP tower, pooled to 4 tokens an image)."""
    from transformers import (
        AutoTokenizer,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    specials = {
        "image_token": "<image_soft_token>",
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
    }
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir, extra_special_tokens=specials)
    tokenizer.pad_token = tokenizer.eos_token
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=(TEMPLATES / "gemma3.jinja").read_text(),
        image_seq_length=4,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in specials.items()}
    config = Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "sliding_window": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        mm_tokens_per_image=4,
        image_token_index=ids["image_token"],
        boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"],
    )
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("llava"), tiny_llama_dir)


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    return build_tiny_gemma3(tmp_path_factory.mktemp("gemma3"), tiny_llama_dir)


def color_rows(folder: Path, count: int = 8) -> Path:
    """`count` conversations, each a picture of a colour (a PNG next to the file, named by a
    relative path) and its name as the answer."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = list(COLORS)[index % len(COLORS)]
        Image.new("RGB", (40 + index, 30), COLORS[name]).save(folder / f"images/{index}.png")
        user = [
            {"type": "image", "path": f"images/{index}.png"},
            {"type": "text", "text": "Color?"},
        ]
        answer = [{"type": "text", "text": f"It is {name}."}]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return write_jsonl(folder / "colors.jsonl", rows)


def vlm_config(base: Path, data: Path, out: Path, **keys: Any) -> dict[str, Any]:
    """Axolotl's multimodal config, as its docs give it."""
    return {
        "base_model": str(base),
        "processor_type": "AutoProcessor",
        "skip_prepare_dataset": True,
        "remove_unused_columns": False,
        "sample_packing": False,
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "dataset_prepared_path": str(out.parent / "prepared"),
        "sequence_len": 256,
        "micro_batch_size": 2,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "bf16": False,
        "output_dir": str(out),
        **keys,
    }


class Batches:
    """Records every training micro-batch (the processor's tensors and the labels)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @hookimpl(wrapper=True)
    def training_step(self, window: list[dict[str, Any]]) -> Any:
        self.seen += [{k: v.clone() for k, v in batch.items()} for batch in window]
        return (yield)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_a_vision_language_model_trains_on_its_assistant_turns(
    family: str, tiny_llava: Path, tiny_gemma3: Path, tmp_path: Path
) -> None:
    """The batches carry the images' pixels and image tokens; the labels are exactly the
    assistant's answers; the model learns; the processor is saved with it."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    base = {"llava": tiny_llava, "gemma3": tiny_gemma3}[family]
    batches = Batches()
    out = tmp_path / "out"
    state = train_with(vlm_config(base, color_rows(tmp_path), out), tmp_path / "c.yml", batches)
    processor = AutoProcessor.from_pretrained(base)
    model_config = AutoConfig.from_pretrained(base)
    image_token = getattr(model_config, "image_token_id", None) or model_config.image_token_index
    answers = set()
    for batch in batches.seen:
        assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0]  # one image a row
        per_image = (batch["input_ids"] == image_token).sum(dim=1)
        assert per_image.tolist() == [per_image[0].item()] * len(per_image)
        assert per_image[0] > 1  # each image expanded into its tokens
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            trained = labels[labels >= 0]
            assert torch.equal(trained, ids[labels >= 0])
            answers.add(processor.tokenizer.decode(trained).strip())
    assert answers <= {f"It is {c}." for c in COLORS} | {f"It is {c}.<end_of_turn>" for c in COLORS}
    losses = [r["loss"] for r in state.log_history if "loss" in r]
    assert losses[-1] < losses[0]
    reloaded = AutoProcessor.from_pretrained(out)
    assert type(reloaded) is type(processor)
    assert type(AutoModelForImageTextToText.from_pretrained(out)).__name__.endswith(
        "ForConditionalGeneration"
    )


def test_freeze_mm_modules_trains_the_language_model_only(tiny_llava: Path, tmp_path: Path) -> None:
    """Frozen, the vision tower and projector keep their weights; trained, they move."""
    before = load_file(str(tiny_llava / "model.safetensors"))
    data = color_rows(tmp_path)
    for frozen in (True, False):
        out = tmp_path / f"out-{frozen}"
        config = vlm_config(tiny_llava, data, out, freeze_mm_modules=frozen)
        train_with(config, tmp_path / f"{frozen}.yml")
        after = load_file(str(out / "model.safetensors"))
        encoders = [n for n in before if "vision_tower" in n or "multi_modal_projector" in n]
        language = [n for n in before if "language_model" in n]
        assert encoders and language
        moved = [n for n in encoders if not torch.equal(after[n], before[n])]
        assert (moved == []) is frozen, moved
        assert any(not torch.equal(after[n], before[n]) for n in language)


def test_lora_on_the_language_model(tiny_llava: Path, tmp_path: Path) -> None:
    """Axolotl's example: LoRA on the language model's projections only, by a regex."""
    regex = r"model.language_model.layers.[\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj"
    config = vlm_config(
        tiny_llava,
        color_rows(tmp_path),
        tmp_path / "out",
        adapter="lora",
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=regex,
    )
    train_with(config, tmp_path / "c.yml")
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert adapter and all("language_model.layers" in name for name in adapter)


def test_images_from_an_images_column_and_a_sharegpt_conversation(
    tiny_llava: Path, tmp_path: Path
) -> None:
    """Axolotl's older shape: `from`/`value` messages, the image in an `images` column."""
    color_rows(tmp_path)
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "Color?"},
                {"from": "gpt", "value": f"It is {name}."},
            ],
            "images": [str(tmp_path / f"images/{index}.png")],
        }
        for index, name in enumerate(["red", "green", "blue", "red"])
    ]
    data = write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    config = vlm_config(tiny_llava, data, tmp_path / "out")
    config["datasets"][0]["field_messages"] = "conversations"
    batches = Batches()
    train_with({**config, "max_steps": 1}, tmp_path / "c.yml", batches)
    batch = batches.seen[0]
    assert "pixel_values" in batch
    from transformers import AutoConfig

    image_token = AutoConfig.from_pretrained(tiny_llava).image_token_index
    assert (batch["input_ids"] == image_token).sum() == 2 * 16  # 2 rows, 16 tokens an image


def test_a_missing_image_names_its_row(tiny_llava: Path, tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "path": "nowhere.png"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Nothing."}]},
            ]
        }
    ]
    data = write_jsonl(tmp_path / "broken.jsonl", rows)
    config = vlm_config(tiny_llava, data, tmp_path / "out")
    path = write_config(tmp_path / "c.yml", config)
    result = run_weave_in_process("preprocess", str(path))
    assert result.returncode != 0
    assert "broken.jsonl:1: image file 'nowhere.png' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"sample_packing": True}, "rows with images cannot be packed here"),
        ({"excess_length_strategy": "truncate"}, "would cut an image's tokens"),
        ({"image_resize_algorithm": "nearest"}, "not one of bilinear, bicubic, lanczos"),
        ({"processor_kwargs": {"tokenizer": "x"}}, "the run's tokenizer is the processor's"),
    ],
)
def test_settings_that_cannot_work_are_refused(
    tiny_llava: Path, tmp_path: Path, keys: dict, message: str
) -> None:
    config = vlm_config(tiny_llava, tmp_path / "none.jsonl", tmp_path / "out", **keys)
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", config))


def test_image_size_resizes_before_the_processor(tmp_path: Path) -> None:
    from axolotl_weave_plugins.multimodal._images import load
    from PIL import Image

    Image.new("RGB", (40, 20), (1, 2, 3)).save(tmp_path / "wide.png")
    assert load(str(tmp_path / "wide.png"), 16, None).size == (16, 16)  # padded square
    assert load(str(tmp_path / "wide.png"), (8, 12), "bicubic").size == (8, 12)
    assert load(str(tmp_path / "wide.png"), None, None).size == (40, 20)
    with pytest.raises(DataError, match="cannot read image"):
        (tmp_path / "bad.png").write_text("not an image")
        load(str(tmp_path / "bad.png"), None, None)


def test_the_config_keeps_axolotls_type(tiny_llava: Path, tmp_path: Path) -> None:
    cfg = open_session(
        write_config(tmp_path / "c.yml", vlm_config(tiny_llava, tmp_path / "d.jsonl", tmp_path))
    ).cfg
    assert cfg.datasets[0].type == "multimodal.chat_template"
    assert cfg.model_type == "AutoModelForImageTextToText"
    assert json.dumps(cfg.processor_kwargs) == "{}"


def test_serve_answers_about_an_image_as_generate_does(tiny_llava: Path, tmp_path: Path) -> None:
    """The official openai client sends a question with an image (a data URL): the server's
    greedy answer is the trained model's own `generate` on the processor's inputs, and the
    prompt counts the image's tokens."""
    import base64
    import io

    import openai
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "out"
    config_path = write_config(
        tmp_path / "c.yml", vlm_config(tiny_llava, color_rows(tmp_path), out, max_steps=2)
    )
    train_with(vlm_config(tiny_llava, color_rows(tmp_path), out, max_steps=2), config_path)
    image = Image.new("RGB", (36, 28), COLORS["green"])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Color?"}]

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = processor.tokenizer.decode(
        ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )

    process, base_url, _ = start_serve(config_path, "--temperature", "0")
    try:
        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)
        answer = client.chat.completions.create(
            model="out", messages=[{"role": "user", "content": content}], max_tokens=4
        )
    finally:
        process.kill()
        process.wait(timeout=30)
    assert answer.usage.prompt_tokens == inputs["input_ids"].shape[1]
    assert (inputs["input_ids"] == processor.image_token_id).sum() == 16
    assert answer.choices[0].message.content == expected
    assert answer.usage.completion_tokens == ids.shape[1] - inputs["input_ids"].shape[1] > 0


def test_inference_takes_an_image(
    tiny_llava: Path, tiny_llama_dir: Path, base_config: dict, tmp_path: Path
) -> None:
    """`weave inference --image PATH`: the greedy answer is the trained model's `generate` on
    the processor's inputs; a text model refuses `--image` with one message."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "out"
    config = vlm_config(tiny_llava, color_rows(tmp_path), out, max_steps=2)
    path = write_config(tmp_path / "c.yml", config)
    train_with(config, path)
    picture = tmp_path / "blue.png"
    Image.new("RGB", (30, 30), COLORS["blue"]).save(picture)
    flags = ["--image", str(picture), "--temperature", "0", "--max-new-tokens", "3"]
    result = run_weave("inference", str(path), *flags, stdin="Color?\n")
    assert result.returncode == 0, result.stderr

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=[text], images=[[Image.open(picture).convert("RGB")]], return_tensors="pt"
    )
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    expected = processor.tokenizer.decode(
        ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert result.stdout == expected + "\n"

    text_model = write_config(tmp_path / "text.yml", base_config)
    refused = run_weave(
        "inference", str(text_model), "--base-model", str(tiny_llama_dir), *flags, stdin="Hi\n"
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--image: this model takes no images" in refused.stderr


def test_two_processes_train_what_one_does(tiny_llava: Path, tmp_path: Path) -> None:
    """Data parallelism (2 processes, gloo) on images: the same losses and weights as one
    process accumulating the same two micro-batches."""
    data = color_rows(tmp_path)
    one = vlm_config(tiny_llava, data, tmp_path / "one", micro_batch_size=1, tf32=False)
    one["gradient_accumulation_steps"] = 2
    state = train_with(one, tmp_path / "one.yml")
    two = vlm_config(tiny_llava, data, tmp_path / "two", micro_batch_size=1, tf32=False)
    result = run_weave(
        "train", str(write_config(tmp_path / "two.yml", two)), "--num-processes", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [r["loss"] for r in state.log_history if "loss" in r]
    history = json.loads((tmp_path / "two" / "trainer_state.json").read_text())["log_history"]
    assert [r["loss"] for r in history if "loss" in r] == pytest.approx(expected, rel=1e-5)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="needs torchao (the torchao extra)"
)
def test_weave_quantize_keeps_a_vision_language_model_whole(
    tiny_llava: Path, tmp_path: Path
) -> None:
    """`weave quantize` loads the model by its class, and saves the processor with it."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    scheme = {"weight_dtype": "int4", "activation_dtype": "int8", "group_size": 32}
    config = vlm_config(
        tiny_llava, color_rows(tmp_path), tmp_path / "out", max_steps=1, quantization=scheme
    )
    path = write_config(tmp_path / "c.yml", config)
    train_with(config, path)
    result = run_weave_in_process("quantize", str(path))
    assert result.returncode == 0, result.stderr
    target = tmp_path / "out" / "quantized"
    model = AutoModelForImageTextToText.from_pretrained(target)
    weight = model.model.language_model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__ == "IntxUnpackedToInt8Tensor"
    assert type(AutoProcessor.from_pretrained(target)).__name__ == "LlavaProcessor"


def test_text_chat_template_options_are_dropped_with_a_warning(
    tiny_llava: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Options of the text chat_template that images do not use are named and ignored; a key
    neither format knows is refused."""
    config = vlm_config(tiny_llava, tmp_path / "d.jsonl", tmp_path / "out")
    config["datasets"][0].update(train_on_eos="turn", roles_to_train=["assistant"])
    with caplog.at_level("WARNING", logger="axolotl_weave"):
        cfg = open_session(write_config(tmp_path / "c.yml", config)).cfg
    assert "'datasets[0].train_on_eos' is a text chat_template option" in caplog.text
    assert cfg.datasets[0].option("roles_to_train") == ["assistant"]
    config["datasets"][0]["feild_messages"] = "messages"
    with pytest.raises(ConfigError, match="feild_messages"):
        open_session(write_config(tmp_path / "d.yml", config))


def two_turn_rows(folder: Path) -> Path:
    """Conversations of two questions, each with its own picture."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (first, second) in enumerate([("red", "blue"), ("green", "red")]):
        for name, color in ((f"{index}a", first), (f"{index}b", second)):
            Image.new("RGB", (33, 31), COLORS[color]).save(folder / f"images/{name}.png")

        def ask(name: str) -> list[dict[str, str]]:
            return [
                {"type": "image", "path": f"images/{name}.png"},
                {"type": "text", "text": "And?"},
            ]

        rows.append(
            {
                "messages": [
                    {"role": "user", "content": ask(f"{index}a")},
                    {"role": "assistant", "content": [{"type": "text", "text": f"It is {first}."}]},
                    {"role": "user", "content": ask(f"{index}b")},
                    {"role": "assistant", "content": [{"type": "text", "text": f"Now {second}."}]},
                ]
            }
        )
    return write_jsonl(folder / "two_turns.jsonl", rows)


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_each_assistant_turn_is_trained_whatever_the_images_before_it(
    tiny_llava: Path, tmp_path: Path, train_on_inputs: bool
) -> None:
    """Two turns, an image in each question: both answers are trained (their spans found after
    the images' expansions); with `train_on_inputs` every token but the image tokens is."""
    from datasets import load_from_disk
    from transformers import AutoConfig, AutoTokenizer

    config = vlm_config(
        tiny_llava, two_turn_rows(tmp_path), tmp_path / "out", train_on_inputs=train_on_inputs
    )
    path = write_config(tmp_path / "c.yml", config)
    result = run_weave_in_process("preprocess", str(path))
    assert result.returncode == 0, result.stderr
    cache = next((tmp_path / "prepared").glob("*/train"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava)
    image_token = AutoConfig.from_pretrained(tiny_llava).image_token_index
    answers = {}
    for row in load_from_disk(str(cache)):
        ids, labels = row["input_ids"], row["labels"]
        assert ids.count(image_token) == 2 * 16
        trained = [t for t, label in zip(ids, labels, strict=True) if label >= 0]
        if train_on_inputs:
            assert trained == [t for t in ids if t != image_token]
        else:
            answers[tokenizer.decode(trained).strip()] = True
    if not train_on_inputs:
        assert set(answers) == {"It is red.  Now blue.", "It is green.  Now red."}


def test_the_gradio_page_takes_uploaded_images(tiny_llava: Path, tmp_path: Path) -> None:
    """With a processor the page's textbox takes files; the answer to an uploaded picture (and,
    on the next turn, to the conversation holding it) is the model's `generate` on the
    processor's inputs."""
    pytest.importorskip("gradio")
    from axolotl_weave.commands import open_session as open_command_session
    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import answer, build_demo, page_settings
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "out"
    config = vlm_config(tiny_llava, color_rows(tmp_path), out, max_steps=1)
    path = write_config(tmp_path / "c.yml", config)
    train_with(config, path)
    session = open_command_session(str(path), [])
    loaded = load_for_inference(session, choose_model(session.cfg, None, None))
    picture, other = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (30, 30), COLORS["red"]).save(picture)
    Image.new("RGB", (30, 30), COLORS["blue"]).save(other)
    sampling = Sampling(max_new_tokens=3, temperature=0)

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()

    def generated(messages: list[dict[str, Any]], images: list[Path]) -> str:
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pictures = [Image.open(p).convert("RGB") for p in images]
        inputs = processor(text=[text], images=[pictures], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        return processor.tokenizer.decode(
            ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )

    ask = [{"type": "image"}, {"type": "text", "text": "Color?"}]
    first = list(answer(loaded, sampling, {"text": "Color?", "files": [str(picture)]}, []))[-1]
    assert first == generated([{"role": "user", "content": ask}], [picture])
    history = [  # as Gradio hands the page's conversation back
        {"role": "user", "content": [{"type": "file", "file": {"path": str(picture)}}]},
        {"role": "user", "content": [{"type": "text", "text": "Color?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
    ]
    second = list(answer(loaded, sampling, {"text": "Color?", "files": [str(other)]}, history))
    conversation = [
        {"role": "user", "content": ask},
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
        {"role": "user", "content": ask},
    ]
    assert second[-1] == generated(conversation, [picture, other])
    demo = build_demo(loaded, page_settings(session.cfg, sampling, "out"))
    assert demo.multimodal
