//! A thread's scheduling priority.

use std::io;

/// Gives the calling thread the nice value `nice` (0 to 19; higher runs later): only this thread, not
/// the process, as Linux keeps a nice value per thread. Raising one's own nice value needs no privilege.
pub fn set_this_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers and touches no memory of ours; `tid` is this thread's id,
    // which stays valid while the thread runs the call.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
