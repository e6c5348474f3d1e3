#!/usr/bin/env bash
# One command on a lent GPU machine: the GPU work of the project in stages, each under a time limit, with
# everything it produced packed into at most 8 files of at most 15 MiB under $OUT, so that it all comes back.
#
# Run from the repository root, on the GPU machine, with the CIFAR-10 pack and the benchmark's kornia wheels carried
# (both git-ignored; scripts/pack_cifar10.sh makes the pack, `pip download` the wheels: docs/EVIDENCE.md):
#
#   STAGES="bench vae" SESSION_SECONDS=560 bash scripts/gpu_session.sh   # the first GPU session: bench, then the VAE
#   STAGES="compare" SESSION_SECONDS=560 bash scripts/gpu_session.sh     # later sessions, once a VAE is shipped
#
# 15 minutes of device time a session, the machine's start included, leave room for one such call: put what belongs
# to one session into that call's STAGES.
#
# Stages (run in the order given, each skipped once the session's time is spent):
#   bench    `make bench-trainer-gpu`: the trainer's step against the model-only step, the views, the IDAA step,
#            50,000-image epochs and torchvision v2 on DataLoader workers; the synchronisation checks (issue: trainer
#            speed). About 3 minutes, capped at 6 by the Makefile's timeouts.
#   vae      the paper's CIFAR-10 VAE (`idaa-train-vae`, bf16 autocast, fp16 weights) for as many epochs as fit
#            (measured by a short probe), stopping cleanly before its time limit; a run folder already there (a warm
#            machine, an earlier call) is resumed. Its 160 MB trainer_state.pt cannot come back: a VAE run lives on
#            one machine, so it is sized to finish there.
#   compare  the comparison harness on CIFAR-10 (ResNet-18) with the shipped default VAE (or COMPARE_VAE), resumed
#            from the finished runs kept in the repository (KEPT_RUNS) and from COMPARE_OUT on a warm machine.
#            Every run of one comparison must use the same VAE: train and ship the VAE first, then compare.
#
# Settings (environment variables; defaults in brackets):
#   STAGES ["bench vae"]  OUT [runs/gpu-session]  SESSION_SECONDS [540]  PYTHON [python3]  DEVICE [cuda]  AMP [--amp]
#   DATA_PACK [data/cifar10-jpeg.tar.xz]  DATA_DIR [data/cifar10-jpeg]
#   VAE_EPOCHS [auto: as many as fit, at most 300]  VAE_MINUTES [7]  VAE_OUT [runs/vae-cifar10-gpu]  VAE_ARGS [""]
#   COMPARE_ARGS ["--epochs 20 --seeds 0 1 2 --batch-size 512"]  COMPARE_OUT [runs/compare-cifar10-gpu]
#   COMPARE_VAE ["": the shipped default]  KEPT_RUNS [docs/evidence/cifar10-gpu/runs]  PART_BYTES [15 MiB]
#
# What comes back ($OUT): session.log (every stage's output), session-NN.tar.gz (the bench results, the VAE folder
# without its 160 MB trainer_state.pt, the harness's report and finished runs without checkpoints), split in 15 MiB
# parts: `cat session-*.tar.gz | tar -xz` puts them back together.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/gpu-session}
SESSION_SECONDS=${SESSION_SECONDS:-540}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
AMP=${AMP---amp}
STAGES=${STAGES:-bench vae}
DATA_PACK=${DATA_PACK:-data/cifar10-jpeg.tar.xz}
DATA_DIR=${DATA_DIR:-data/cifar10-jpeg}
VAE_EPOCHS=${VAE_EPOCHS:-auto}
VAE_MINUTES=${VAE_MINUTES:-7}
VAE_OUT=${VAE_OUT:-runs/vae-cifar10-gpu}
VAE_ARGS=${VAE_ARGS:-}
COMPARE_ARGS=${COMPARE_ARGS:---epochs 20 --seeds 0 1 2 --batch-size 512}
COMPARE_OUT=${COMPARE_OUT:-runs/compare-cifar10-gpu}
COMPARE_VAE=${COMPARE_VAE:-}
KEPT_RUNS=${KEPT_RUNS:-docs/evidence/cifar10-gpu/runs}
PART_BYTES=${PART_BYTES:-$((15 * 1024 * 1024))}

start=$(date +%s)
mkdir -p "$OUT"
stage_dir=$(mktemp -d)
log="$OUT/session.log"
say() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - start))s] $*" | tee -a "$log"; }
left() { echo $((SESSION_SECONDS - ($(date +%s) - start))); }

pack() {
    # Everything the stages left in $stage_dir, in parts under $OUT that the machine can send back.
    if [ -n "$(ls -A "$stage_dir")" ]; then
        tar -C "$stage_dir" -czf - . | split -b "$PART_BYTES" -d -a 2 --additional-suffix=.tar.gz - "$OUT/session-"
        say "packed: $(ls "$OUT" | tr '\n' ' ')"
    fi
    rm -rf "$stage_dir"
}
trap pack EXIT

setup() {
    say "machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
    say "python: $($PYTHON -c 'import sys, torch, torchvision; print(sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())' 2>&1)"
    if ! $PYTHON -c 'import kornia' 2>/dev/null; then
        if ls .whl/kornia-*.whl >/dev/null 2>&1; then
            $PYTHON -m pip install --quiet --no-index --find-links .whl kornia >>"$log" 2>&1 \
                && say "kornia installed from .whl/" || say "kornia: install from .whl/ failed (see above)"
        else
            say "kornia is missing and .whl/ holds no wheel: the bench's kornia views will fail"
        fi
    fi
    if [ ! -d "$DATA_DIR/train" ]; then
        if [ -f "$DATA_PACK" ]; then
            mkdir -p "$DATA_DIR" && xz -dc -T0 "$DATA_PACK" | tar -x -C "$DATA_DIR" && say "unpacked $DATA_PACK"
        else
            say "no $DATA_DIR/train and no $DATA_PACK: the vae and compare stages need CIFAR-10"
        fi
    fi
}

# Runs a stage's command under the time that is left (less a margin for packing); its output goes to the log.
run_limited() {
    local name=$1 margin=20; shift
    local limit=$(($(left) - margin))
    if [ "$limit" -lt 30 ]; then
        say "$name: skipped, $(left) s of the session left"
        return 1
    fi
    say "$name: start (at most $limit s): $*"
    timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$log" 2>&1
    local status=$?
    case $status in
        3) say "$name: exit status 3 (stopped early; the same stage in a later session continues it)" ;;
        *) say "$name: exit status $status" ;;
    esac
    return "$status"
}

stage_bench() {
    if ! command -v make >/dev/null; then
        say "bench: no make on this machine; the commands are those of the Makefile's bench-trainer-gpu target"
        return 1
    fi
    run_limited bench make bench-trainer-gpu PYTHON="$PYTHON" OUT="$stage_dir/bench"
}

# The VAE's epoch count: VAE_EPOCHS, the count of a run already in VAE_OUT, or (VAE_EPOCHS=auto) as many as fit in
# the time left at the speed of a one-epoch probe on 5,000 images (its first epoch pays the warm-up, so the count errs
# short). The schedule decays to zero over that count, so the VAE it ships has finished its schedule.
vae_epochs() {
    local minutes=$1
    if [ -f "$VAE_OUT/trainer_state.pt" ]; then
        $PYTHON -c 'import sys, torch; print(torch.load(sys.argv[1], weights_only=True)["settings"]["epochs"])' \
            "$VAE_OUT/trainer_state.pt"
    elif [ "$VAE_EPOCHS" != auto ]; then
        echo "$VAE_EPOCHS"
    else
        local probe="$VAE_OUT-probe"
        rm -rf "$probe"
        # shellcheck disable=SC2086  # AMP and VAE_ARGS hold zero or more arguments
        "$PYTHON" -m idaa_transforms.train_vae --dataset cifar10 --data-dir "$DATA_DIR" --subset 5000 --epochs 1 \
            $AMP --device "$DEVICE" --no-progress --out "$probe" $VAE_ARGS >>"$log" 2>&1 || return 1
        $PYTHON - "$probe/metrics.jsonl" "$minutes" <<'PY'
import json, sys
rate = json.loads(open(sys.argv[1]).read().splitlines()[-1])["images_per_s"]
print(max(1, min(300, int((float(sys.argv[2]) * 60 - 30) * rate / 50000))))
PY
    fi
}

stage_vae() {
    # Training stops between epochs before its limit, leaving 90 s for the held-out figures and the packing.
    local minutes epochs
    minutes=$(awk -v want="$VAE_MINUTES" -v left="$(left)" 'BEGIN { m = (left - 90) / 60; print (m < want ? m : want) }')
    if ! epochs=$(vae_epochs "$minutes"); then
        say "vae: the probe failed (see above); skipped"
        return 1
    fi
    minutes=$(awk -v want="$VAE_MINUTES" -v left="$(left)" 'BEGIN { m = (left - 90) / 60; print (m < want ? m : want) }')
    say "vae: $epochs epochs, at most $minutes minutes in this call"
    # shellcheck disable=SC2086  # AMP and VAE_ARGS hold zero or more arguments
    run_limited vae "$PYTHON" -m idaa_transforms.train_vae --dataset cifar10 --data-dir "$DATA_DIR" \
        --epochs "$epochs" $AMP --device "$DEVICE" --save-dtype float16 --save-every 5 \
        --max-minutes "$minutes" --no-progress --out "$VAE_OUT" --resume $VAE_ARGS
    if [ -d "$VAE_OUT" ]; then
        mkdir -p "$stage_dir/vae"
        find "$VAE_OUT" -maxdepth 1 -type f ! -name trainer_state.pt -exec cp {} "$stage_dir/vae/" \;
    fi
}

stage_compare() {
    mkdir -p "$COMPARE_OUT"
    if [ -d "$KEPT_RUNS" ]; then
        cp -rn "$KEPT_RUNS/." "$COMPARE_OUT/"   # finished runs of earlier sessions; never over newer files
    fi
    local vae=()
    [ -n "$COMPARE_VAE" ] && vae=(--vae "$COMPARE_VAE")
    # No run starts, and none goes on to another epoch, past this limit; 60 s are left for the report and packing.
    local minutes
    minutes=$(awk -v left="$(left)" 'BEGIN { m = (left - 60) / 60; print (m > 0.5 ? m : 0.5) }')
    # shellcheck disable=SC2086  # AMP and COMPARE_ARGS hold zero or more arguments
    run_limited compare "$PYTHON" -m idaa_transforms.experiments.compare --dataset cifar10 --data-dir "$DATA_DIR" \
        --device "$DEVICE" --out "$COMPARE_OUT" --max-minutes "$minutes" --resume --whole-runs $AMP "${vae[@]}" \
        $COMPARE_ARGS
    mkdir -p "$stage_dir/compare"
    tar -C "$COMPARE_OUT" --exclude=checkpoint.pt -cf - . | tar -x -C "$stage_dir/compare"
}

# The last lines of the output: what each stage produced, for a reader who sees only the end of it.
summary() {
    local held="$stage_dir/vae/held_out.json" bench="$stage_dir/bench/gpu-trainer/results.md"
    local report="$stage_dir/compare/report.md"
    if [ -f "$held" ]; then
        say "vae: $($PYTHON - "$held" <<'PY'
import json, sys
held = json.load(open(sys.argv[1]))
test = held["images"]
print(f"{held['epochs']} epochs, {held['seconds'] / 60:.1f} min, test PSNR {test['psnr']:.2f} dB "
      f"(4x bilinear {test['baselines_psnr']['downsample_4x_bilinear']:.2f}), colour kept {test['colour_ratio']:.3f}")
PY
)"
    fi
    [ -f "$bench" ] && grep -E '^\|' "$bench" | head -30
    [ -f "$report" ] && grep -E '^\|' "$report" | head -30
    return 0
}

say "session: stages '$STAGES', $SESSION_SECONDS s, output in $OUT"
setup
for stage in $STAGES; do
    case "$stage" in
        bench) stage_bench ;;
        vae) stage_vae ;;
        compare) stage_compare ;;
        *) say "unknown stage '$stage' (expected bench, vae or compare); skipped" ;;
    esac
done
summary
say "session: done"
