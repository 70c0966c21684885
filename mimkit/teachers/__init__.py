"""Frozen teachers for feature mimicking (MR-MAE): patch features on the student's grid, [CLS] attention."""

from mimkit.model_configs.teacher import TeacherConfig
from mimkit.teachers.base import FrozenTeacher, TeacherOutput
from mimkit.teachers.build import build_teacher, packaged_mobilenet_v2_weights

__all__ = ["FrozenTeacher", "TeacherConfig", "TeacherOutput", "build_teacher", "packaged_mobilenet_v2_weights"]
