//! Frames on the control socket: a `u32` little-endian length, then the body; the first
//! `sendmsg` may carry up to [`MAX_FDS`] fds (`SCM_RIGHTS`). Blocking calls on a stream socket.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Largest spec frame the helper accepts.
pub(crate) const MAX_SPEC: usize = 16 << 20;
/// Largest report frame the runner accepts.
pub(crate) const MAX_REPORT: usize = 64 << 10;

/// Most fds one frame carries.
pub(crate) const MAX_FDS: usize = 8;
const CMSG_SPACE: usize = 64;

/// Sends one frame, with `fd` attached to its first byte.
pub(crate) fn send_frame(sock: RawFd, body: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    send_frame_fds(sock, body, fd.as_slice())
}

/// Receives one frame of at most `max` bytes and the fd that came with it, if any (any further
/// fds are closed).
pub(crate) fn recv_frame(sock: RawFd, max: usize) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let (body, fds) = recv_frame_fds(sock, max)?;
    Ok((body, fds.into_iter().next()))
}

/// Sends one frame with `fds` (at most [`MAX_FDS`]) attached to its first byte.
pub(crate) fn send_frame_fds(sock: RawFd, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one frame",
        ));
    }
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?
        .to_le_bytes();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len);
    frame.extend_from_slice(body);
    let mut sent = 0;
    let mut fds = fds;
    while sent < frame.len() {
        let mut iov = libc::iovec {
            iov_base: frame[sent..].as_ptr() as *mut libc::c_void,
            iov_len: frame.len() - sent,
        };
        let mut cmsg_buf = [0u64; CMSG_SPACE / 8];
        // SAFETY: msghdr is plain old data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let bytes = (4 * fds.len()) as u32;
            msg.msg_control = cmsg_buf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as _;
            // SAFETY: the control buffer is large enough for one cmsg carrying MAX_FDS fds,
            // and suitably aligned (u64 array).
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as _;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, raw) in fds.iter().enumerate() {
                    std::ptr::write_unaligned(data.add(i), *raw);
                }
            }
        }
        // SAFETY: msg is fully initialised and points at live buffers.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        fds = &[];
        sent += n as usize;
    }
    Ok(())
}

/// Receives one frame of at most `max` bytes and the fds that came with it.
pub(crate) fn recv_frame_fds(sock: RawFd, max: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < 4 {
        let (n, passed) = recv_some(sock, &mut len[got..], fds.is_empty())?;
        if !passed.is_empty() {
            fds = passed;
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let (n, _) = recv_some(sock, &mut body[got..], false)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok((body, fds))
}

fn recv_some(sock: RawFd, buf: &mut [u8], want_fds: bool) -> io::Result<(usize, Vec<OwnedFd>)> {
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_SPACE / 8];
        // SAFETY: msghdr is plain old data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_SPACE as _;
        // SAFETY: msg points at live buffers of the sizes given.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut fds = Vec::new();
        // SAFETY: the kernel filled msg_control; the CMSG macros walk it within its length.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        let raw = std::ptr::read_unaligned(data.add(i));
                        // Every passed fd is ours now: kept if wanted, else closed.
                        let owned = OwnedFd::from_raw_fd(raw);
                        if want_fds {
                            fds.push(owned);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        return Ok((n as usize, fds));
    }
}
