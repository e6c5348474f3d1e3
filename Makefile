# Benchmarks of IDAATransform (see benchmarks/RESULTS.md).
PYTHON ?= .venv/bin/python
OUT ?= benchmarks/results

.PHONY: bench bench-cpu bench-gpu check-cuda-sync

bench: bench-cpu

## CPU figures: one thread and process CPU time, which a shared machine perturbs least (a few minutes).
bench-cpu:
	$(PYTHON) benchmarks/bench.py --device cpu --arch small_cnn --vaes paper,shipped --batch-sizes 64,32,128 \
		--image-sizes 32,64,96 --repeats 5 --warmup 1 --threads 1 --clock cpu --amp bf16 --compile transform \
		--out $(OUT)/cpu

## Whole GPU run (ResNet-18, AMP and compile variants), then the synchronisation check; under 6 minutes on an H100.
bench-gpu:
	timeout 320 $(PYTHON) benchmarks/bench.py --device cuda --arch resnet18 --vaes paper,shipped \
		--batch-sizes 256,512,1024 --image-sizes 32,96,224 --repeats 10 --warmup 3 --amp bf16,fp16 \
		--compile transform,modules --budget-s 200 --out $(OUT)/gpu; \
	$(PYTHON) benchmarks/check_cuda_sync.py

check-cuda-sync:
	$(PYTHON) benchmarks/check_cuda_sync.py
