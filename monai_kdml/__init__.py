"""monai-kdml: online knowledge distillation + peer mutual learning for MONAI.

One teacher and K students train together on the same batches; each student learns from the labels, the teacher's
softened outputs (KD) and its peers (ML); the deployed model is the ensemble of students.
Method: Niyaz & Bathula, "Augmenting Knowledge Distillation with Peer-to-Peer Mutual Learning for Model
Compression", ISBI 2022.
"""

# before anything imports torch: OpenMP reads its wait policy once, when torch loads it (see monai_kdml.threads)
from monai_kdml._cli import install_error_summary
from monai_kdml.threads import configure_threads

configure_threads()
install_error_summary()

from monai_kdml.keys import Mode, TeacherMode  # noqa: E402
from monai_kdml.losses import KDLoss, KDMLLoss, MutualLearningLoss  # noqa: E402

__version__ = "0.1.0"

__all__ = ["KDLoss", "KDMLLoss", "Mode", "MutualLearningLoss", "TeacherMode", "__version__"]
