"""A real MRML scene from the slicer-core package, set up as the Slicer application sets it up.

Only what the module's Logic needs: application logic with colour logic, and the segmentations
module logic registered with the scene and the application logic (without it, ``AddEmptySegment``
cannot build a binary labelmap). The sequence follows qSlicerCoreApplication and trame-slicer's
``SlicerApp``. Import this only after checking that slicer-core imports.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slicer


@dataclass
class SlicerScene:
    scene: "slicer.vtkMRMLScene"
    app_logic: "slicer.vtkSlicerApplicationLogic"
    segmentations_logic: "slicer.vtkSlicerSegmentationsModuleLogic"

    def _read(self, node_class: str, storage_class: str, path: str | Path, name: str | None):
        node = self.scene.AddNewNodeByClass(node_class, name or Path(path).name.split(".")[0])
        storage = self.scene.AddNewNodeByClass(storage_class)
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            raise RuntimeError(f"{storage_class} could not read {path}")
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.CreateDefaultDisplayNodes()
        return node

    def load_volume(self, path: str | Path, name: str | None = None):
        """A scalar volume node read through its real storage node (vtkMRMLVolumeArchetypeStorageNode)."""
        return self._read("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode", path, name)

    def load_segmentation(self, path: str | Path, name: str | None = None):
        """A segmentation node read through its real storage node (vtkMRMLSegmentationStorageNode)."""
        return self._read("vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", path, name)

    def new_segmentation(self, name: str = "Segmentation"):
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        return node


def make_scene() -> SlicerScene:
    """A fresh scene with application, colour and segmentations logic, as in Slicer."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)
    segmentations_logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Segmentations", segmentations_logic)
    return SlicerScene(scene, app_logic, segmentations_logic)
