// libvirt's C API for ballonet-host: the public API (libvirt.so) and the QEMU monitor pass-through
// (libvirt-qemu.so), which is the only way to the QMP monitor of a domain libvirtd owns.
#include <libvirt/libvirt.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/virterror.h>
