"""Online models: each sensor learns its own normal, its trend and its time to action.

See docs/online-models.md. `OnlineModels` (manager) is what the pipeline uses;
`SensorModel` (model) is one sensor's state.
"""

from ballpass.stream.online.manager import ACTIONS, OnlineModels
from ballpass.stream.online.model import Observation, OnlineResult, SensorModel

__all__ = ["ACTIONS", "Observation", "OnlineModels", "OnlineResult", "SensorModel"]
