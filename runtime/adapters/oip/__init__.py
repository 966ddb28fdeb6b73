"""Generated gRPC messages and service stubs of the Open Inference Protocol v2.

``inference_pb2`` (messages, in a private descriptor pool so that tritonclient's own
``inference`` messages import beside them) and ``inference_pb2_grpc`` (service stubs) are
written by ``scripts/gen_oip_grpc.py`` from ``inference.proto``; do not edit them.
"""
