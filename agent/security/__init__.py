"""What confines a container's processes beyond namespaces and capabilities: the seccomp profile.

``seccomp_profile`` reads Docker's JSON profile format and decides, for one container, which rules
apply (pure); ``seccomp_filter`` turns that decision into a BPF program with libseccomp. The program
is loaded by ``agent.linux.seccomp`` in the container's init and in every exec, right before
``execve``. ``seccomp_default.json`` is Docker's default profile, vendored as data (see
``seccomp_default.NOTICE``).
"""
