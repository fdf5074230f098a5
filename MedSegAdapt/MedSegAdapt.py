"""MedSegAdapt scripted module for 3D Slicer (first version: module registration only).

The panels (inputs, segment, suggestions, corrections, adapt, settings), the Logic over
MedSegAdaptLib and the in-Slicer self-test are built in the Slicer-module issue; until then the
library is used through its `medsegadapt` command line.
"""
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget


class MedSegAdapt(ScriptedLoadableModule):
    """Module metadata shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSegAdapt"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["MedSegAdapt team"]
        self.parent.helpText = (
            "Report-guided volumetric segmentation with LiteMedSAM, active suggestions of what to annotate "
            "and adaptation to the local scanner. This first version registers the module; the panels "
            "follow. Use the medsegadapt command line meanwhile."
        )
        self.parent.acknowledgementText = "Built on LiteMedSAM, segment-anything, MONAI and slicerio."


class MedSegAdaptWidget(ScriptedLoadableModuleWidget):
    """Placeholder panel that says where the functionality is today."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import qt

        label = qt.QLabel("The MedSegAdapt panels are not built yet: use the `medsegadapt` command line "
                          "(segment, evaluate, demo).")
        label.wordWrap = True
        self.layout.addWidget(label)
        self.layout.addStretch(1)
