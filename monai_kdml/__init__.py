"""monai-kdml: online knowledge distillation + peer mutual learning for MONAI.

One teacher and K students train together on the same batches; each student learns from the labels, the teacher's
softened outputs (KD) and its peers (ML); the deployed model is the ensemble of students.
Method: Niyaz & Bathula, "Augmenting Knowledge Distillation with Peer-to-Peer Mutual Learning for Model
Compression", ISBI 2022.
"""

from monai_kdml.keys import Mode, TeacherMode
from monai_kdml.losses import KDLoss, KDMLLoss, MutualLearningLoss

__version__ = "0.1.0"

__all__ = ["KDLoss", "KDMLLoss", "Mode", "MutualLearningLoss", "TeacherMode", "__version__"]
