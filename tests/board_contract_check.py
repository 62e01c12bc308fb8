from edgekernel.device.board import Board
from edgekernel.device.session import BoardSession
from edgekernel.mqtt.session import MqttSession

def boards(serial: BoardSession, mqtt: MqttSession) -> list[Board]:
    return [serial, mqtt]
