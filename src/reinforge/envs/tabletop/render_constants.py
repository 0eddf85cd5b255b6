"""Constants shared by the torch and numba renderers (primitive layout, camera poses, colours)."""

# primitive fields
(F_SHAPE, F_X0, F_X1, F_Y0, F_Y1, F_Z0, F_Z1, F_R, F_G, F_B, F_INSET, F_FLAGS) = range(12)
PRIM_FIELDS = 12
FLAG_ACTIVE, FLAG_SHADOW, FLAG_HIDE_WRIST = 1, 2, 4
# camera fields: origin, right, up, forward (unit, orthogonal), tan of the half field of view (x, y)
CAM_FIELDS = 14
NUM_VIEWS = 2
VIEW_NAMES = ("agentview", "wrist")

TABLE_HALF = (0.4, 0.34)
TABLE_RGB = (196, 170, 132)
FLOOR_RGB = (92, 96, 108)
SKY_RGB = (60, 64, 74)
GRID = 0.1
GRID_LINE = 0.006
SHADOW = 0.62
INTERIOR = 0.42
AGENT_EYE = (0.0, -0.42, 0.52)
AGENT_TARGET = (0.0, 0.05, 0.0)
AGENT_TAN = 0.44
WRIST_OFFSET = (0.0, -0.05, 0.075)
WRIST_PITCH = 0.45  # radians the wrist camera tilts forward from straight down
WRIST_TAN = 0.9
