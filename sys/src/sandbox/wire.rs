//! Frames on the control socket: a `u32` little-endian length, then the body; the first
//! `sendmsg` may carry one fd (`SCM_RIGHTS`). Blocking calls on a stream socket.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Largest spec frame the helper accepts.
pub(crate) const MAX_SPEC: usize = 16 << 20;
/// Largest report frame the runner accepts.
pub(crate) const MAX_REPORT: usize = 64 << 10;

const CMSG_SPACE: usize = 64;

/// Sends one frame, with `fd` attached to its first byte.
pub(crate) fn send_frame(sock: RawFd, body: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?
        .to_le_bytes();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len);
    frame.extend_from_slice(body);
    let mut sent = 0;
    let mut fd = fd;
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
        if let Some(raw) = fd {
            msg.msg_control = cmsg_buf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
            // SAFETY: the control buffer is large enough for one cmsg carrying one fd, and
            // suitably aligned (u64 array).
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw);
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
        fd = None;
        sent += n as usize;
    }
    Ok(())
}

/// Receives one frame of at most `max` bytes and the fd that came with it, if any.
pub(crate) fn recv_frame(sock: RawFd, max: usize) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut fd = None;
    let mut got = 0;
    while got < 4 {
        let (n, passed) = recv_some(sock, &mut len[got..], fd.is_none())?;
        if passed.is_some() {
            fd = passed;
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
    Ok((body, fd))
}

fn recv_some(sock: RawFd, buf: &mut [u8], want_fd: bool) -> io::Result<(usize, Option<OwnedFd>)> {
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
        let mut fd = None;
        // SAFETY: the kernel filled msg_control; the CMSG macros walk it within its length.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        let raw = std::ptr::read_unaligned(data.add(i));
                        // Every passed fd is ours now: keep the first, close the rest.
                        let owned = OwnedFd::from_raw_fd(raw);
                        if want_fd && fd.is_none() {
                            fd = Some(owned);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        return Ok((n as usize, fd));
    }
}
