#!/usr/bin/env bash
# GPU check in one call, on a CUDA machine, from the repository root (after pip install -e ".[test,deploy]"):
#   1. every test that needs CUDA: the test files that mention cuda (found here, not listed, so a
#      moved file is not missed): AMP float16 + grad scaler, bfloat16, channels_last, the trainer's CUDA paths;
#   2. training images/s of resnet50-resnet18 (teacher + 2 students, kdml) at 224 px, batch 64: float32, float16,
#      bfloat16, bfloat16 + channels_last, bfloat16 + torch.compile (benchmarks/gpu_train_rate.py);
#   3. ONNX Runtime on CUDA when onnxruntime-gpu provides CUDAExecutionProvider: the exported student ensemble
#      against eager on the GPU (max |diff|) and both timed at batch 32;
#   4. the MSI bundle one epoch float32 vs AMP, and the multi-GPU config with nccl on one process.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

echo "== 1. CUDA tests"
mapfile -t cuda_tests < <(grep -rl --include='test_*.py' "cuda" tests | sort)
echo "files: ${cuda_tests[*]}"
python -m pytest -q -p no:cacheprovider -n 0 -rs "${cuda_tests[@]}" 2>&1 | tail -15

echo "== 2. training img/s, resnet50-resnet18 224 px"
rate=(python benchmarks/gpu_train_rate.py --preset resnet50-resnet18 --image-size 224 --batch 64)
"${rate[@]}"
"${rate[@]}" --amp-dtype float16
"${rate[@]}" --amp-dtype bfloat16
"${rate[@]}" --amp-dtype bfloat16 --channels-last
"${rate[@]}" --amp-dtype bfloat16 --compile --warmup 10

echo "== 3. ONNX Runtime on CUDA"
python - <<'EOF'
import tempfile, time
from pathlib import Path

import numpy as np
import torch

try:
    import onnxruntime as ort
except ImportError:
    raise SystemExit("onnxruntime not installed: skipped")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    raise SystemExit(f"no CUDAExecutionProvider in {ort.get_available_providers()} (pip install onnxruntime-gpu): skipped")
from monai_kdml.networks import StudentEnsemble, build_network
from monai_kdml.networks.export import export_network, onnx_session

torch.manual_seed(0)
net = StudentEnsemble([build_network("resnet18") for _ in range(2)]).eval()
with tempfile.TemporaryDirectory() as tmp:
    export_network(net, Path(tmp) / "ensemble", (2, 3, 224, 224), formats=("onnx",))
    session = onnx_session(Path(tmp) / "ensemble.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    net = net.cuda()
    x = torch.rand(32, 3, 224, 224)
    with torch.inference_mode():
        want = net(x.cuda()).cpu().numpy()
    got = session.run(["pred"], {"image": x.numpy()})[0]
    print(f"ONNX Runtime CUDA vs eager CUDA, resnet18 x2 ensemble 224 px b32: max |diff| {np.abs(got - want).max():.3g}")
    for name, call in (("eager", lambda: net(x.cuda())), ("onnx", lambda: session.run(["pred"], {"image": x.numpy()}))):
        with torch.inference_mode():
            for _ in range(3):
                call()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                call()
            torch.cuda.synchronize()
        print(f"  {name}: {32 * 10 / (time.perf_counter() - start):.0f} img/s (host-to-device copy included)")
EOF

echo "== 4. MSI bundle, float32 vs AMP, and nccl DDP"
common=(--bundle_root /tmp/gpu_msi --demo_patients 24 --demo_tiles_per_patient 20 --preset resnet50-resnet18 --image_size 224 --batch_size 64 --max_epochs 1 --num_workers 8)
for amp in false true; do
  python -m monai.bundle run --config_file bundles/msi/train.json "${common[@]}" --amp $amp --overwrite true > /tmp/gpu_msi_$amp.log 2>&1 || tail -20 /tmp/gpu_msi_$amp.log
  echo "msi resnet50-resnet18 224px amp=$amp: $(grep -h 'KDMLTrainer.*Epoch\[1\] Complete' /tmp/gpu_msi_$amp.log)"
done
python -m torch.distributed.run --nproc_per_node=1 -m monai.bundle run --config_file "['bundles/msi/train.json','bundles/msi/multi_gpu_train.json']" "${common[@]}" --amp true --overwrite true > /tmp/gpu_ddp.log 2>&1 && echo "nccl 1-process DDP run ok: $(grep -h 'KDMLTrainer.*Epoch\[1\] Complete' /tmp/gpu_ddp.log)" || tail -20 /tmp/gpu_ddp.log
