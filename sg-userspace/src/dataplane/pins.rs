//! What outlives the agent: the programs, maps and links pinned on a BPF filesystem.
//!
//! One directory per network namespace (default `/sys/fs/bpf/sgctl/<netns inode>/`, so
//! agents of parallel test namespaces never meet):
//!
//! ```text
//! gen-<N>/<MAP NAME>        every map of one loaded object (a "generation")
//! gen-<N>/prog-ingress      its XDP program
//! gen-<N>/prog-egress       its TC program
//! link-<ifindex>-xdp        the XDP link of an interface (BPF link: updated in place)
//! link-<ifindex>-tcx        the TCX link of an interface, where the kernel has TCX
//! ```
//!
//! A link pinned here keeps its interface enforcing with no process holding it; a new
//! agent opens the pins and carries on. An upgrade loads a new generation beside the old
//! one and moves each link over with one `BPF_LINK_UPDATE`, so no packet finds an
//! interface without a program.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData},
    programs::{SchedClassifier, Xdp},
};
use aya_obj::programs::XdpAttachType;

use super::{
    MapSource,
    error::{DataplaneError, Doing as _, Result},
    object::Dataplane,
};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory of one network namespace.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

/// Whether `path` lies on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: `c` is NUL-terminated and `st` a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Mounts a BPF filesystem at `at` (what systemd does at boot; `ip netns exec` mounts a
/// fresh /sys without one).
fn mount_bpffs(at: &Path) -> io::Result<()> {
    std::fs::create_dir_all(at)?;
    let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings; a plain mount with no data.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Pins {
    /// The pin directory `dir`, created on the BPF filesystem it lies on. When `dir` is
    /// under `/sys/fs/bpf` and no BPF filesystem is mounted there, one is mounted first
    /// (`mounted` says so: under `ip netns exec`, whose mount namespace dies with the
    /// command, such pins do not outlive the agent).
    pub fn open(dir: &Path) -> Result<(Self, bool)> {
        let bpffs = Path::new(crate::paths::BPFFS);
        let mut mounted = false;
        if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
            mount_bpffs(bpffs).doing_with(|| format!("mounting a BPF filesystem at {}", bpffs.display()))?;
            mounted = true;
        }
        std::fs::create_dir_all(dir).doing_with(|| format!("creating the pin directory {}", dir.display()))?;
        if !is_bpffs(dir) {
            return Err(DataplaneError::Refused(format!("{} is not on a BPF filesystem", dir.display())));
        }
        Ok((Self { dir: dir.to_path_buf() }, mounted))
    }

    /// The pins at `dir` as they are, for reading and removing (`sgctl down`): nothing
    /// is created or mounted.
    pub fn existing(dir: &Path) -> Option<Self> {
        (dir.is_dir() && is_bpffs(dir)).then(|| Self { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of generation `id`.
    pub fn generation_dir(&self, id: u32) -> PathBuf {
        self.dir.join(format!("gen-{id}"))
    }

    /// The pinned link of `ifindex`'s hook `hook` ("xdp" or "tcx").
    pub fn link(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.dir.join(format!("link-{ifindex}-{hook}"))
    }

    /// The generations pinned here, oldest first.
    pub fn generations(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("gen-")?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The pinned links here (paths).
    pub fn links(&self) -> Vec<PathBuf> {
        let mut links: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("link-")))
            .map(|e| e.path())
            .collect();
        links.sort();
        links
    }

    /// Unpins generation `id`: its maps and programs are freed once no link or process
    /// holds them.
    pub fn remove_generation(&self, id: u32) -> io::Result<()> {
        let dir = self.generation_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes the whole directory (every generation and link pinned here).
    pub fn remove_all(self) -> io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

/// Pins every map and both programs of `dp` as generation `id` (its directory must not
/// exist yet); `dp` stays usable, so tests can run packets through it while a second
/// handle works through the pins. Maps must not have been taken out of `dp` yet.
pub fn pin_objects(dp: &mut Dataplane, pins: &Pins, id: u32) -> Result<()> {
    let dir = pins.generation_dir(id);
    if dir.exists() {
        return Err(DataplaneError::Refused(format!("{} exists already", dir.display())));
    }
    std::fs::create_dir_all(&dir).doing_with(|| format!("creating {}", dir.display()))?;
    let pinned = (|| {
        for (name, map) in dp.ebpf.maps() {
            // `.rodata` and friends: held by the programs, never opened by name.
            if name.starts_with('.') {
                continue;
            }
            map.pin(dir.join(name)).doing_with(|| format!("pinning map {name}"))?;
        }
        dp.xdp()?.pin(dir.join(INGRESS_PIN)).doing("pinning the XDP program")?;
        dp.tc()?.pin(dir.join(EGRESS_PIN)).doing("pinning the TC program")?;
        Ok::<_, DataplaneError>(())
    })();
    if let Err(e) = pinned {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(())
}

/// Pin names of the two programs inside a generation directory.
const INGRESS_PIN: &str = "prog-ingress";
const EGRESS_PIN: &str = "prog-egress";

/// One loaded object whose maps and programs are pinned: the agent works on it through
/// the pins, whether it loaded it a moment ago or a predecessor did.
pub struct Generation {
    pub id: u32,
    dir: PathBuf,
    pub xdp: Xdp,
    pub tc: SchedClassifier,
}

impl Generation {
    /// Pins every map and both programs of a freshly loaded `dp` as generation `id`,
    /// and reopens it through the pins. Maps must not have been taken out of `dp` yet.
    pub fn pin(mut dp: Dataplane, pins: &Pins, id: u32) -> Result<Self> {
        pin_objects(&mut dp, pins, id)?;
        drop(dp);
        Self::open(pins, id)
    }

    /// Opens pinned generation `id`.
    pub fn open(pins: &Pins, id: u32) -> Result<Self> {
        let dir = pins.generation_dir(id);
        let xdp = Xdp::from_pin(dir.join(INGRESS_PIN), XdpAttachType::Interface)
            .doing_with(|| format!("opening {}", dir.join(INGRESS_PIN).display()))?;
        let tc = SchedClassifier::from_pin(dir.join(EGRESS_PIN))
            .doing_with(|| format!("opening {}", dir.join(EGRESS_PIN).display()))?;
        Ok(Self { id, dir, xdp, tc })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kernel ids of the two programs, (XDP, TC).
    pub fn program_ids(&self) -> Result<(u32, u32)> {
        Ok((self.xdp.info()?.id(), self.tc.info()?.id()))
    }

    /// Key and value sizes and entries of pinned map `name`.
    pub fn map_shape(&self, name: &str) -> Result<(u32, u32, u32)> {
        let info = aya::maps::MapInfo::from_pin(self.dir.join(name)).doing_with(|| format!("map {name}"))?;
        Ok((info.key_size(), info.value_size(), info.max_entries()))
    }
}

impl MapSource for Generation {
    /// Opens pinned map `name` (a new handle each call).
    fn take_raw_map(&mut self, name: &str) -> Result<Map> {
        let data = MapData::from_pin(self.dir.join(name)).doing_with(|| format!("opening pinned map {name}"))?;
        Ok(Map::from_map_data(data)?)
    }
}
