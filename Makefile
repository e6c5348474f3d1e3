# Benchmarks of IDAATransform and of the reference trainer (see benchmarks/RESULTS.md).
PYTHON ?= .venv/bin/python
OUT ?= benchmarks/results

.PHONY: bench bench-cpu bench-gpu bench-trainer-cpu bench-trainer-gpu check-cuda-sync

bench: bench-cpu

## CPU figures: one thread and process CPU time, which a shared machine perturbs least (a few minutes).
bench-cpu:
	$(PYTHON) benchmarks/bench.py --device cpu --arch small_cnn --vaes paper,shipped --batch-sizes 64,32,128 \
		--image-sizes 32,64,96 --repeats 5 --warmup 1 --threads 1 --clock cpu --amp bf16 --compile transform \
		--out $(OUT)/cpu

## Whole GPU run of the transform (ResNet-18, AMP and compile variants), then the synchronisation check;
## under 6 minutes on an H100.
bench-gpu:
	timeout 320 $(PYTHON) benchmarks/bench.py --device cuda --arch resnet18 --vaes paper,shipped \
		--batch-sizes 256,512,1024 --image-sizes 32,96,224 --repeats 10 --warmup 3 --amp bf16,fp16 \
		--compile transform,modules --budget-s 200 --out $(OUT)/gpu; \
	$(PYTHON) benchmarks/check_cuda_sync.py

## The trainer's step on the CPU: small CNN and ResNet-18 at a small batch, one thread, process CPU time.
bench-trainer-cpu:
	$(PYTHON) benchmarks/bench.py --suite trainer --device cpu --arch small_cnn --batch-sizes 64 --image-sizes 32 \
		--repeats 7 --warmup 2 --threads 1 --clock cpu --epoch-images 0 --out $(OUT)/cpu-trainer-small_cnn
	$(PYTHON) benchmarks/bench.py --suite trainer --device cpu --arch resnet18 --batch-sizes 32 --image-sizes 32 \
		--repeats 5 --warmup 1 --threads 1 --clock cpu --epoch-images 0 --out $(OUT)/cpu-trainer-resnet18
	$(PYTHON) benchmarks/bench.py --suite trainer --device cpu --arch small_cnn --batch-sizes 256 --image-sizes 32 \
		--repeats 15 --threads 1 --clock cpu --profile --out $(OUT)/cpu-trainer-profile

## The trainer's step on a GPU in one command (expected 2-3 minutes on an H100; the timeouts cap it at 6): CIFAR ResNet-18,
## 32 px, batch 512, bf16, channels_last: model-only, plain and IDAA steps, the views (fast and kornia), 50,000-image
## epochs of the baseline, IDAA and torchvision v2 on 16 DataLoader workers; the views' stage-by-stage times and
## profile; the synchronisation check of the transform and of the trainer's step.
bench-trainer-gpu:
	mkdir -p $(OUT)/gpu-trainer
	timeout 240 $(PYTHON) benchmarks/bench.py --suite trainer --device cuda --arch resnet18 --vaes shipped \
		--batch-sizes 512 --image-sizes 32 --amp bf16 --channels-last --repeats 20 --warmup 5 \
		--epoch-images 50000 --loader-workers 16 --out $(OUT)/gpu-trainer 2>&1 | tee $(OUT)/gpu-trainer/bench.log
	timeout 60 $(PYTHON) benchmarks/bench.py --suite trainer --device cuda --arch resnet18 --vaes shipped \
		--batch-sizes 512 --image-sizes 32 --amp bf16 --channels-last --repeats 20 --profile \
		--out $(OUT)/gpu-trainer/profile > /dev/null
	timeout 60 $(PYTHON) benchmarks/check_cuda_sync.py 2>&1 | tee $(OUT)/gpu-trainer/check_cuda_sync.txt

check-cuda-sync:
	$(PYTHON) benchmarks/check_cuda_sync.py
