# The Python client (PyPI `kubernetes`) against mube: exec and
# port-forward over WebSocket, as `stream()` and `portforward()` do them.
# Used by tests/pods.rs; argv: kubeconfig, pod.
import sys
from kubernetes import client, config
from kubernetes.stream import stream, portforward
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
pod, ns = sys.argv[2], "default"
out = stream(api.connect_get_namespaced_pod_exec, pod, ns, command=["sh", "-c", "echo py-exec; exit 6"],
             stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
out.run_forever(timeout=10)
print("exec-out:", out.read_stdout().strip(), "rc:", out.returncode)
pf = portforward(api.connect_get_namespaced_pod_portforward, pod, ns, ports="8080")
sock = pf.socket(8080)
sock.setblocking(True)
sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = sock.recv(1024)
    if not chunk:
        break
    data += chunk
sock.close()
print("pf-body:", data.split(b"\r\n\r\n", 1)[-1].decode().strip())
