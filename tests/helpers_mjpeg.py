"""A real MJPEG-over-HTTP camera on 127.0.0.1 that can be made to die and come back.

`drop(outage_s)` ends the current stream at once and answers new connections
with 503 for `outage_s` seconds, like an IP camera rebooting.
"""

from __future__ import annotations

import http.server
import socketserver
import threading
import time

import cv2

from helpers_onnx_model import strip_frame


class FlakyMjpegCamera:
    def __init__(self, fps: float = 25.0) -> None:
        self.fps = fps
        self.generation = 0            # bumped by drop(): streams of older generations end
        self.down_until = 0.0
        self.frozen_until = 0.0        # freeze(): connections stay open but nothing is sent
        self.connections = 0
        self.frames_sent = 0
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if time.monotonic() < camera.down_until:
                    self.send_error(503, "camera rebooting")
                    return
                camera.connections += 1
                generation = camera.generation
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                while generation == camera.generation and not camera._stopped.is_set():
                    if time.monotonic() < camera.frozen_until:
                        time.sleep(0.02)
                        continue
                    ok, jpg = cv2.imencode(".jpg", strip_frame(i))
                    part = (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                            + jpg.tobytes() + b"\r\n")
                    try:
                        self.wfile.write(part)
                    except OSError:
                        return
                    camera.frames_sent += 1
                    i += 1
                    time.sleep(1.0 / camera.fps)

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._stopped = threading.Event()
        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/video.mjpg"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-camera", daemon=True)

    def start(self) -> FlakyMjpegCamera:
        self._thread.start()
        return self

    def drop(self, outage_s: float) -> None:
        self.down_until = time.monotonic() + outage_s
        self.generation += 1

    def freeze(self, seconds: float) -> None:
        """Like a camera or RTSP server stopped with SIGSTOP: the socket stays open and silent."""
        self.frozen_until = time.monotonic() + seconds

    def stop(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
