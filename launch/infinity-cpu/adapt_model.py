"""Makes the vLLM CPU stack's tiny CLIP folder readable by infinity's transformers (4.47).

    adapt_model.py SRC DST

SRC is the folder launch/vllm-cpu/make_models.py built with transformers 5; DST gets the same
weights and tokenizer in the layout transformers 4 reads, so infinity and vLLM serve one checkpoint
(tests/infinity_live.rs compares their vectors). Four differences, each checked here:
  - the text window: infinity 0.0.78 cuts CLIP text at `config.max_length` when the config has
    one, and transformers 4 gives every config a generation default of 20, so without
    "max_length": 77 in config.json infinity embeds only the first 18 tokens of a description
    (found against this server: cosine 0.93 to vLLM's vector for a 45-token text). The GPU
    recipe needs the same line: launch/infinity/embedder.sh;
  - the image processor: transformers 5 writes it inside processor_config.json, 4 reads
    preprocessor_config.json;
  - the tokenizer class: 5 names its generic "TokenizersBackend", which 4 does not know; CLIP's
    processor in 4 wants CLIPTokenizerFast;
  - CLIPTokenizerFast in 4 refuses a pre-tokenizer that is not a Sequence, so the byte-level
    pre-tokenizer is wrapped in a Sequence of one, which splits text the same way (asserted below on
    sample strings: the token ids must not change).
Run with the infinity venv's python (it needs tokenizers and transformers).
"""

import json
import shutil
import sys
from pathlib import Path

SAMPLES = [
    "a dog",
    "A red bus parked beside  two people, at night.",
    "Ünïcode, emoji 🐕 and tabs\tand newlines\n",
    "",
]


def main():
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(src / "model.safetensors", tmp / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    config["max_length"] = config["text_config"]["max_position_embeddings"]
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    processor = json.loads((src / "processor_config.json").read_text())
    (tmp / "preprocessor_config.json").write_text(json.dumps(processor["image_processor"], indent=2))
    (tmp / "processor_config.json").write_text(
        json.dumps({"processor_class": processor.get("processor_class", "CLIPProcessor")}, indent=2)
    )
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg.pop("backend", None)
    tok_cfg["tokenizer_class"] = "CLIPTokenizerFast"
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    tok = json.loads((src / "tokenizer.json").read_text())
    if tok.get("pre_tokenizer", {}).get("type") != "Sequence":
        tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [tok["pre_tokenizer"]]}
    (tmp / "tokenizer.json").write_text(json.dumps(tok))

    from tokenizers import Tokenizer
    from transformers import AutoProcessor

    original = Tokenizer.from_file(str(src / "tokenizer.json"))
    adapted = AutoProcessor.from_pretrained(str(tmp)).tokenizer
    from transformers import AutoConfig

    if AutoConfig.from_pretrained(str(tmp)).max_length != 77:
        sys.exit("adapt_model: config.max_length is not 77; infinity would cut text short")
    for s in SAMPLES:
        want = original.encode(s).ids
        got = adapted(s)["input_ids"]
        if want != got:
            sys.exit(f"adapt_model: token ids changed for {s!r}: {want} -> {got}")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(f"[adapt_model] {dst}: the tiny CLIP of {src}, readable by transformers 4 (same weights, same token ids)")


if __name__ == "__main__":
    main()
