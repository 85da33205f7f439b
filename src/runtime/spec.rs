//! The OCI runtime spec (`config.json`) for an image: `runc spec`'s defaults
//! for the sandbox, docker's rules for what comes from the image config.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, ProcessBuilder, RootBuilder,
    Spec, UserBuilder, get_default_maskedpaths, get_default_mounts, get_default_readonly_paths,
};

use super::RuntimeError;
use super::user::{ExecUser, resolve_user_in};

/// PATH when the image sets none (docker's and runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set: what images expect root to be able to
/// do (chown, setuid for package managers, binding low ports, …), still far
/// from all capabilities.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// What the caller decides rather than the image.
#[derive(Clone, Debug, Default)]
pub struct SpecOptions {
    /// Replaces the image's Cmd when not empty (the Entrypoint stays).
    pub args: Vec<String>,
    pub hostname: String,
    /// Give the process a terminal: only when the caller's stdin is one.
    pub terminal: bool,
}

/// The spec for `config`, with the user resolved in the image's rootfs.
pub fn spec_for_image(
    config: &ImageConfiguration,
    rootfs: &Path,
    opts: &SpecOptions,
) -> Result<Spec, RuntimeError> {
    let user = config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let exec_user = resolve_user_in(rootfs, &user)?;
    build_spec(config, &exec_user, opts)
}

/// The process arguments: Entrypoint, then the caller's arguments or else
/// the image's Cmd.
pub fn process_args(
    config: &ImageConfiguration,
    args: &[String],
) -> Result<Vec<String>, RuntimeError> {
    let c = config.config().as_ref();
    let mut argv: Vec<String> = c.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    if args.is_empty() {
        argv.extend(c.and_then(|c| c.cmd().clone()).unwrap_or_default());
    } else {
        argv.extend(args.iter().cloned());
    }
    if argv.is_empty() {
        return Err(RuntimeError::NoCommand);
    }
    Ok(argv)
}

/// The environment: the image's, plus PATH and HOME when it lacks them
/// (and TERM for a terminal), as docker adds them.
pub fn process_env(config: &ImageConfiguration, user: &ExecUser, terminal: bool) -> Vec<String> {
    let mut env: Vec<String> = config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    let has = |env: &[String], key: &str| {
        env.iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", user.home));
    }
    if terminal && !has(&env, "TERM") {
        env.push("TERM=xterm".to_string());
    }
    env
}

/// The working directory: the image's, made absolute, else `/`.
pub fn process_cwd(config: &ImageConfiguration) -> String {
    let dir = config
        .config()
        .as_ref()
        .and_then(|c| c.working_dir().clone())
        .unwrap_or_default();
    if dir.starts_with('/') {
        dir
    } else {
        format!("/{dir}")
    }
}

/// Builds the spec: rootfs `rootfs` (writable: it is the overlay), the
/// default mounts, masked and read-only paths, and namespaces of
/// `runc spec`, no cgroup namespace (as `runc spec`), docker's capabilities
/// for root and none for other users (as docker since 20.10).
pub fn build_spec(
    config: &ImageConfiguration,
    user: &ExecUser,
    opts: &SpecOptions,
) -> Result<Spec, RuntimeError> {
    let caps: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    let held = if user.uid == 0 {
        caps.clone()
    } else {
        HashSet::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(held.clone())
        .permitted(held)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let mut exec_user = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        exec_user = exec_user.additional_gids(user.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(opts.terminal)
        .user(exec_user.build()?)
        .args(process_args(config, &opts.args)?)
        .env(process_env(config, user, opts.terminal))
        .cwd(process_cwd(config))
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;
    // Deny every device; the runtime adds the standard ones (null, zero,
    // tty, random, …) itself.
    let deny_devices = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?;
    let linux = LinuxBuilder::default()
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![deny_devices])
                .build()?,
        )
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;
    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()?,
    ));
    spec.set_hostname(Some(opts.hostname.clone()));
    spec.set_mounts(Some(get_default_mounts()));
    spec.set_linux(Some(linux));
    spec.set_annotations(None);
    Ok(spec)
}

/// The spec as `config.json` text, capability lists sorted so that one
/// image gives the same file every time.
pub fn spec_json(spec: &Spec) -> Result<Vec<u8>, RuntimeError> {
    let mut value = serde_json::to_value(spec)?;
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for list in caps.values_mut() {
            if let Some(items) = list.as_array_mut() {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    let mut bytes = serde_json::to_vec_pretty(&value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn config(body: Value) -> ImageConfiguration {
        let mut full = json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        full["config"] = body;
        serde_json::from_value(full).unwrap()
    }

    fn root() -> ExecUser {
        ExecUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        }
    }

    fn spec_value(config: &ImageConfiguration, user: &ExecUser, opts: &SpecOptions) -> Value {
        let spec = build_spec(config, user, opts).unwrap();
        serde_json::from_slice(&spec_json(&spec).unwrap()).unwrap()
    }

    #[test]
    fn args_are_entrypoint_then_user_args_or_cmd() {
        let c = config(json!({"Entrypoint": ["/bin/tini", "--"], "Cmd": ["nginx", "-g"]}));
        assert_eq!(
            process_args(&c, &[]).unwrap(),
            ["/bin/tini", "--", "nginx", "-g"]
        );
        let given = vec!["sh".to_string()];
        assert_eq!(process_args(&c, &given).unwrap(), ["/bin/tini", "--", "sh"]);
        let c = config(json!({"Cmd": ["sh"]}));
        assert_eq!(process_args(&c, &given).unwrap(), ["sh"]);
        let e = process_args(&config(json!({})), &[]).unwrap_err();
        assert!(e.to_string().contains("no command"), "{e}");
    }

    #[test]
    fn env_gets_path_home_and_term_only_when_missing() {
        let c = config(json!({"Env": ["A=1", "HOME=/data"]}));
        let env = process_env(&c, &root(), true);
        assert_eq!(
            env,
            [
                "A=1",
                "HOME=/data",
                &format!("PATH={DEFAULT_PATH}"),
                "TERM=xterm"
            ]
        );
        let c = config(json!({"Env": ["PATH=/opt/bin"]}));
        assert_eq!(
            process_env(&c, &root(), false),
            ["PATH=/opt/bin", "HOME=/root"]
        );
    }

    #[test]
    fn working_dir_defaults_to_root_and_is_made_absolute() {
        assert_eq!(process_cwd(&config(json!({}))), "/");
        assert_eq!(process_cwd(&config(json!({"WorkingDir": "srv"}))), "/srv");
        assert_eq!(process_cwd(&config(json!({"WorkingDir": "/app"}))), "/app");
    }

    #[test]
    fn sandbox_defaults_match_runc_spec() {
        let opts = SpecOptions {
            args: vec![],
            hostname: "box".into(),
            terminal: false,
        };
        let v = spec_value(&config(json!({"Cmd": ["sh"]})), &root(), &opts);
        assert_eq!(v["root"], json!({"path": "rootfs", "readonly": false}));
        assert_eq!(v["hostname"], "box");
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(
            v["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        let destinations: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        let sys = &v["mounts"][5]["options"];
        assert!(sys.as_array().unwrap().contains(&json!("ro")), "{sys}");
        let namespaces: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(namespaces, ["pid", "network", "ipc", "uts", "mount"]);
        assert!(
            v["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
        assert!(
            v["linux"]["readonlyPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/sys"))
        );
        assert_eq!(
            v["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
    }

    #[test]
    fn root_holds_dockers_capabilities_and_other_users_none() {
        let opts = SpecOptions::default();
        let c = config(json!({"Cmd": ["sh"]}));
        let v = spec_value(&c, &root(), &opts);
        let caps = &v["process"]["capabilities"];
        assert_eq!(caps["bounding"].as_array().unwrap().len(), 14);
        assert_eq!(caps["bounding"][0], "CAP_AUDIT_WRITE", "sorted: {caps}");
        assert_eq!(caps["effective"], caps["bounding"]);
        assert_eq!(caps["ambient"], json!([]));
        assert_eq!(caps["inheritable"], json!([]));
        let app = ExecUser {
            uid: 1234,
            gid: 2345,
            additional_gids: vec![10],
            home: "/home/app".into(),
        };
        let v = spec_value(&c, &app, &opts);
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1234, "gid": 2345, "additionalGids": [10]})
        );
        assert_eq!(v["process"]["capabilities"]["effective"], json!([]));
        assert_eq!(v["process"]["capabilities"]["permitted"], json!([]));
    }

    #[test]
    fn same_image_gives_the_same_file() {
        let c = config(json!({"Cmd": ["sh"]}));
        // Each build makes new hash sets, with new iteration orders.
        let build =
            || spec_json(&build_spec(&c, &root(), &SpecOptions::default()).unwrap()).unwrap();
        let first = build();
        for _ in 0..8 {
            assert_eq!(build(), first);
        }
    }
}
