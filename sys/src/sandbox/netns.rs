//! Network namespaces: bringing `lo` up, and [`NetnsPool`], namespaces created ahead of time
//! (creating one costs far more than joining one) and lent to one sandbox at a time (SBX-8).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Brings `lo` of the calling thread's network namespace up (needs CAP_NET_ADMIN there).
pub(super) fn lo_up() -> io::Result<()> {
    // SAFETY: socket returns a fresh fd or -1.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let mut ifr = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    ifr.name[..2].copy_from_slice(b"lo");
    // SAFETY: ifr is a valid ifreq for both ioctls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS as _, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS as _, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A new network namespace with `lo` up, created on a short-lived thread (unshare of the
/// network namespace affects only the calling thread). Needs root.
pub(super) fn create_netns() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("procmesh-netns".into())
        .spawn(|| {
            // SAFETY: unshare on this thread only; it exits right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            lo_up()?;
            let fd = std::fs::File::open("/proc/thread-self/ns/net")?;
            Ok(OwnedFd::from(fd))
        })?
        .join()
        .map_err(|_| io::Error::other("the netns thread panicked"))?
}

type Slots = Mutex<Vec<OwnedFd>>;

/// Network namespaces created ahead of time, each with only `lo`, up (root only).
#[derive(Debug)]
pub struct NetnsPool {
    slots: Arc<Slots>,
}

impl NetnsPool {
    /// Creates `count` network namespaces now.
    pub fn new(count: usize) -> io::Result<NetnsPool> {
        let fds = (0..count)
            .map(|_| create_netns())
            .collect::<io::Result<Vec<_>>>()?;
        Ok(NetnsPool {
            slots: Arc::new(Mutex::new(fds)),
        })
    }

    /// Lends a namespace, or `None` if all are lent.
    pub fn acquire(&self) -> Option<NetnsLease> {
        let fd = self.slots.lock().expect("netns pool lock").pop()?;
        Some(NetnsLease {
            fd: Some(fd),
            pool: Arc::downgrade(&self.slots),
        })
    }

    /// How many namespaces are not lent.
    pub fn available(&self) -> usize {
        self.slots.lock().expect("netns pool lock").len()
    }
}

/// A namespace lent by a [`NetnsPool`]; it goes back when dropped (SBX-8: drop it only once the
/// action's cgroup is empty). Outliving the pool, it just closes.
#[derive(Debug)]
pub struct NetnsLease {
    fd: Option<OwnedFd>,
    pool: Weak<Slots>,
}

impl NetnsLease {
    /// The namespace's fd (`/proc/thread-self/ns/net` of its creator).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("present until drop").as_fd()
    }
}

impl Drop for NetnsLease {
    fn drop(&mut self) {
        if let (Some(fd), Some(pool)) = (self.fd.take(), self.pool.upgrade()) {
            pool.lock().expect("netns pool lock").push(fd);
        }
    }
}
