#!/usr/bin/env bash
# GPU check of the MSI path (run on a CUDA machine from the repository root):
#   1. the CUDA/AMP tests; 2. the MSI bundle with the paper-like preset at 224 px, fp32 vs AMP, one epoch each;
#   3. the multi-GPU config with nccl on one process.
set -uo pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_trainer.py 2>&1 | tail -3
common=(--bundle_root /tmp/gpu_msi --demo_patients 24 --demo_tiles_per_patient 20 --preset resnet50-resnet18 --image_size 224 --batch_size 64 --max_epochs 1 --num_workers 8)
for amp in false true; do
  python -m monai.bundle run --config_file bundles/msi/train.json "${common[@]}" --amp $amp > /tmp/gpu_msi_$amp.log 2>&1 || tail -20 /tmp/gpu_msi_$amp.log
  echo "msi resnet50-resnet18 224px amp=$amp: $(grep -h 'KDMLTrainer.*Epoch\[1\] Complete' /tmp/gpu_msi_$amp.log)"
  rm -rf /tmp/gpu_msi/models
done
python -m torch.distributed.run --nproc_per_node=1 -m monai.bundle run --config_file "['bundles/msi/train.json','bundles/msi/multi_gpu_train.json']" "${common[@]}" --amp true > /tmp/gpu_ddp.log 2>&1 && echo "nccl 1-process DDP run ok: $(grep -h 'KDMLTrainer.*Epoch\[1\] Complete' /tmp/gpu_ddp.log)" || tail -20 /tmp/gpu_ddp.log
