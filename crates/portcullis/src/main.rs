//! The `portcullis` command line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use portcullis::handler::Proxy;
use portcullis::server::{self, Drain, Listener, Shutdown};
use portcullis::source::{self, FileSource};
use portcullis::state::{compile_and_publish, Gateway};
use portcullis::{admin, echo, migrate, report, tls};
use portcullis_config::{compile, Manifests, Settings};

/// jemalloc instead of the C library's allocator. With glibc it takes 7% of the
/// instructions off a proxied request and a little memory off each idle TLS connection
/// (bench/RESULTS.md); the container image is static musl, whose allocator is much
/// slower still.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "The secure single entry point to a Kubernetes cluster"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: portcullis::logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Ingresses found in a directory of manifests, reloading on change.
    Serve {
        #[command(flatten)]
        input: Input,
        /// Plain HTTP listener (redirects to HTTPS for hosts with TLS).
        #[arg(long)]
        http_addr: Option<SocketAddr>,
        /// HTTPS listener.
        #[arg(long)]
        https_addr: Option<SocketAddr>,
        /// Health, readiness and metrics listener.
        #[arg(long)]
        admin_addr: Option<SocketAddr>,
        /// How often to look for changed manifest files (SIGHUP reloads at once).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        watch_interval: Duration,
    },
    /// Kubernetes mode: serve the Ingresses of the cluster, watching the API server
    /// (in-cluster configuration or KUBECONFIG).
    Controller {
        /// Gateway config file (YAML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Watch only these namespaces (repeatable). Default: all.
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        /// The IngressClass to serve (overrides ingressClass in the config file).
        #[arg(long)]
        ingress_class: Option<String>,
        /// Plain HTTP listener (redirects to HTTPS for hosts with TLS).
        #[arg(long)]
        http_addr: Option<SocketAddr>,
        /// HTTPS listener.
        #[arg(long)]
        https_addr: Option<SocketAddr>,
        /// Health, readiness and metrics listener.
        #[arg(long)]
        admin_addr: Option<SocketAddr>,
        /// Write the addresses of this LoadBalancer Service (NAMESPACE/NAME) to the
        /// status of the Ingresses served.
        #[arg(long, conflicts_with = "publish_status_address")]
        publish_service: Option<String>,
        /// Write these addresses (IPs or hostnames, comma-separated) to Ingress status.
        #[arg(long, value_delimiter = ',')]
        publish_status_address: Vec<String>,
        /// Namespace of the leader-election Lease. Default: $POD_NAMESPACE, else portcullis.
        #[arg(long)]
        lease_namespace: Option<String>,
    },
    /// Validate manifests: print every problem with its object and field; exit 1 on errors.
    Check {
        #[command(flatten)]
        input: Input,
    },
    /// Print the compiled route table, or explain what one URL gets.
    Routes {
        #[command(flatten)]
        input: Input,
        /// A URL such as https://app.example.com/api/x
        #[arg(long)]
        explain: Option<String>,
        /// With --explain: decide as this user (a verified email).
        #[arg(long = "as", value_name = "EMAIL", requires = "explain")]
        as_user: Option<String>,
        /// With --as: the user's groups, comma-separated.
        #[arg(long, value_delimiter = ',', requires = "as_user")]
        groups: Vec<String>,
        /// With --as: a claim the user has, CLAIM=VALUE (repeatable).
        #[arg(long = "claim", value_name = "CLAIM=VALUE", requires = "as_user")]
        claims: Vec<String>,
        /// With --explain: the client address.
        #[arg(long, requires = "explain")]
        from: Option<std::net::IpAddr>,
    },
    /// Map every way into the cluster and report what is exposed, unencrypted or
    /// unprotected, from manifest files, directories or `-` (stdin).
    Scan {
        /// Files or directories (searched recursively); `-` reads stdin, so
        /// `helm template ... | portcullis scan -` works.
        #[arg(required_unless_present = "cluster")]
        paths: Vec<PathBuf>,
        /// Scan the cluster the in-cluster config or KUBECONFIG points at (read-only;
        /// Secrets are never read).
        #[arg(long)]
        cluster: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: ScanFormat,
        /// Exit 1 when a finding of this severity or worse remains (critical, high,
        /// medium, low, info).
        #[arg(long, value_parser = parse_severity)]
        fail_on: Option<portcullis_scan::Severity>,
        /// Suppressions: lines of `RULE-ID [Kind namespace/name] # reason`.
        #[arg(long)]
        ignore: Option<PathBuf>,
        /// Do not honour portcullis.dev/ignore annotations (the people who deploy can
        /// otherwise exempt themselves).
        #[arg(long)]
        no_annotation_ignores: bool,
    },
    /// Report how the Ingresses written for ingress-nginx fare under Portcullis: the
    /// status of every nginx.ingress.kubernetes.io/ annotation, its portcullis.dev/
    /// equivalent, and whether `portcullis serve --ingress-class nginx` would serve each
    /// Ingress. Exit 1 when one would not be served.
    Migrate {
        /// Files or directories (searched recursively); `-` reads stdin.
        #[arg(required_unless_present = "cluster")]
        paths: Vec<PathBuf>,
        /// Read the cluster the in-cluster config or KUBECONFIG points at (read-only;
        /// Secrets are never read, so certificates are not checked).
        #[arg(long)]
        cluster: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: migrate::Format,
        /// `rejected`: exit 1 when an Ingress would not be served; `differs`: also when
        /// an annotation is supported only with a difference, or ignored.
        #[arg(long, value_enum, default_value = "rejected")]
        fail_on: migrate::FailOn,
        /// The class ingress-nginx serves, which Portcullis would take over.
        #[arg(long, default_value = "nginx")]
        ingress_class: String,
        /// Gateway config file (YAML), e.g. for the OpenID providers portcullis.dev/auth names.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print NetworkPolicies that close what the scan finds: default deny per namespace,
    /// plus admission of the gateway's pods to each backend an Ingress routes to.
    Netpol {
        /// Files or directories (searched recursively); `-` reads stdin.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Namespace the Portcullis pods run in.
        #[arg(long, default_value = "portcullis")]
        gateway_namespace: String,
        /// Labels of the Portcullis pods, KEY=VALUE (repeatable).
        #[arg(long = "gateway-label", default_value = "app.kubernetes.io/name=portcullis")]
        gateway_labels: Vec<String>,
    },
    /// A small backend that answers with a JSON echo of the request it received.
    Echo {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        #[arg(long, default_value = "echo")]
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ScanFormat {
    Table,
    Json,
    Sarif,
}

fn parse_severity(s: &str) -> Result<portcullis_scan::Severity, String> {
    portcullis_scan::Severity::parse(s)
        .ok_or_else(|| format!("{s:?} is not one of critical, high, medium, low, info"))
}

#[derive(clap::Args)]
struct Input {
    /// Directory (searched recursively) or file of Kubernetes manifests; `-` for stdin.
    #[arg(long)]
    manifests: PathBuf,
    /// Gateway config file (YAML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The IngressClass to serve (overrides ingressClass in the config file), e.g.
    /// `nginx` to take over an ingress-nginx installation's Ingresses unchanged.
    #[arg(long)]
    ingress_class: Option<String>,
}

impl Input {
    /// The config file's settings with the flags applied.
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = load_settings(self.config.as_ref())?;
        if let Some(class) = &self.ingress_class {
            settings.ingress_class = class.clone();
        }
        Ok(settings)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    portcullis_config::units::parse_duration(s)
}

/// The exit code for CI: failure when something was found wrong.
fn failure_if(failed: bool) -> std::process::ExitCode {
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// How many threads serve requests: `TOKIO_WORKER_THREADS` when set, else one per CPU
/// the process may use (`available_parallelism` counts a container's CPU quota).
fn worker_threads(setting: Option<std::ffi::OsString>) -> anyhow::Result<usize> {
    let Some(value) = setting else {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get()));
    };
    match value.to_str().map(|v| v.trim().parse::<usize>()) {
        Some(Ok(n)) if n > 0 => Ok(n),
        _ => anyhow::bail!("TOKIO_WORKER_THREADS={value:?} is not a number of threads (1 or more)"),
    }
}

/// One worker runs the single-threaded scheduler. On one thread, tokio's multi-threaded
/// scheduler only adds cost: besides its bookkeeping, it runs a task woken by the
/// running one (a request handed to its backend connection) at once rather than in
/// turn. That spreads the writes to backends and clients out in time, and each one
/// more often wakes a peer that had gone to sleep. Bench scenario 1: 2–4% less CPU per
/// request, and fewer wake-up interrupts sent to the other CPU (bench/RESULTS.md).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build()
}

/// Writes out the logs still queued when `main` returns or unwinds.
struct FlushLogs;

impl Drop for FlushLogs {
    fn drop(&mut self) {
        portcullis::logging::flush();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    // The gateway's requests never wait on stderr; a command's logs come in order with
    // what else it writes there.
    let gateway = matches!(cli.command, Command::Serve { .. } | Command::Controller { .. });
    portcullis::logging::init(format, gateway);
    // Flushed on the way out, also when unwinding from a panic.
    let flush = FlushLogs;
    let workers = match worker_threads(std::env::var_os("TOKIO_WORKER_THREADS")) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match runtime(workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if gateway {
        // The scheduler actually built, not the one meant.
        let scheduler = match runtime.handle().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "single-threaded",
            _ => "multi-threaded",
        };
        tracing::info!(
            workers,
            scheduler,
            "serving on {workers} worker thread{} ({scheduler} scheduler)",
            if workers == 1 { "" } else { "s" }
        );
    }
    let result = runtime.block_on(run(cli.command));
    // What was logged comes out before the process's last word.
    drop(flush);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command {
        Command::Serve {
            input,
            http_addr,
            https_addr,
            admin_addr,
            watch_interval,
        } => {
            let mut settings = input.settings()?;
            if let Some(a) = http_addr {
                settings.listen.http = a;
            }
            if let Some(a) = https_addr {
                settings.listen.https = a;
            }
            if let Some(a) = admin_addr {
                settings.listen.admin = a;
            }
            let source = if input.manifests.as_os_str() == "-" {
                ConfigSource::Stdin
            } else {
                ConfigSource::Files {
                    path: input.manifests,
                    watch_interval,
                }
            };
            serve(settings, source).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Controller {
            config,
            namespaces,
            ingress_class,
            http_addr,
            https_addr,
            admin_addr,
            publish_service,
            publish_status_address,
            lease_namespace,
        } => {
            let publish = match (publish_service, publish_status_address.is_empty()) {
                (Some(s), _) => {
                    let (namespace, name) = portcullis_config::split_namespaced(&s)
                        .ok_or_else(|| anyhow::anyhow!("--publish-service {s:?}: write NAMESPACE/NAME"))?;
                    Some(portcullis::status::Publish::Service {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                    })
                }
                (None, false) => Some(portcullis::status::Publish::Addresses(publish_status_address)),
                (None, true) => None,
            };
            let status = portcullis::status::StatusConfig {
                publish,
                lease_namespace: lease_namespace
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .unwrap_or_else(|| "portcullis".into()),
                lease_name: "portcullis-leader".into(),
                identity: std::env::var("POD_NAME")
                    .or_else(|_| std::env::var("HOSTNAME"))
                    .unwrap_or_else(|_| format!("portcullis-{}", std::process::id())),
            };
            let mut settings = load_settings(config.as_ref())?;
            if let Some(c) = ingress_class {
                settings.ingress_class = c;
            }
            if let Some(a) = http_addr {
                settings.listen.http = a;
            }
            if let Some(a) = https_addr {
                settings.listen.https = a;
            }
            if let Some(a) = admin_addr {
                settings.listen.admin = a;
            }
            serve(settings, ConfigSource::Cluster { namespaces, status }).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Check { input } => {
            let settings = input.settings()?;
            let manifests = read_once(&input.manifests)?;
            let compiled = compile(&manifests, &settings, portcullis::auth::now());
            print!(
                "{}",
                report::check(
                    &compiled,
                    &input.manifests.display().to_string(),
                    manifests.object_count()
                )
            );
            Ok(failure_if(compiled.error_count() > 0))
        }
        Command::Routes {
            input,
            explain,
            as_user,
            groups,
            claims,
            from,
        } => {
            let settings = input.settings()?;
            let manifests = read_once(&input.manifests)?;
            let compiled = compile(&manifests, &settings, portcullis::auth::now());
            let errors = compiled.error_count();
            if errors > 0 {
                eprintln!(
                    "note: {errors} problems; run `portcullis check` to see them (affected objects are not in the table)"
                );
            }
            match explain {
                Some(url) => {
                    let mut parsed = Vec::new();
                    for c in &claims {
                        let (k, v) = c
                            .split_once('=')
                            .ok_or_else(|| anyhow::anyhow!("--claim {c:?}: write CLAIM=VALUE"))?;
                        parsed.push((k.to_string(), v.to_string()));
                    }
                    let caller = report::Caller {
                        email: as_user,
                        groups,
                        claims: parsed,
                        from,
                    };
                    print!(
                        "{}",
                        report::explain(&compiled.snapshot, &url, &caller).map_err(anyhow::Error::msg)?
                    )
                }
                None => print!("{}", report::routes(&compiled.snapshot)),
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Scan {
            paths,
            cluster,
            format,
            fail_on,
            ignore,
            no_annotation_ignores,
        } => {
            let mut inventory = read_inventory(&paths)?;
            if cluster {
                let live = portcullis::cluster::read_cluster().await?;
                // Files and the cluster may be scanned together: merge the cluster's objects.
                inventory.merge(live);
            }
            let suppressions = match &ignore {
                Some(p) => {
                    let text =
                        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
                    portcullis_scan::parse_ignore_file(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                }
                None => Vec::new(),
            };
            let options = portcullis_scan::Options {
                suppressions,
                annotation_suppressions: !no_annotation_ignores,
            };
            let report = portcullis_scan::scan(&inventory, &options);
            let text = match format {
                ScanFormat::Table => portcullis_scan::output::table(&report),
                ScanFormat::Json => portcullis_scan::output::json(&report),
                ScanFormat::Sarif => portcullis_scan::output::sarif(&report),
            };
            println!("{}", text.trim_end());
            let failed = fail_on.is_some_and(|limit| report.findings.iter().any(|f| f.severity <= limit));
            Ok(failure_if(failed))
        }
        Command::Migrate {
            paths,
            cluster,
            format,
            fail_on,
            ingress_class,
            config,
        } => {
            let mut settings = load_settings(config.as_ref())?;
            settings.ingress_class = ingress_class;
            let mut inventory = read_inventory(&paths)?;
            if cluster {
                inventory.merge(portcullis::cluster::read_cluster().await?);
            }
            for p in &inventory.problems {
                eprintln!("{p}");
            }
            let compiled = compile(&inventory.manifests, &settings, portcullis::auth::now());
            let options = migrate::Options {
                secrets_unread: cluster,
            };
            let report = migrate::report(&inventory.manifests, &compiled, &settings, options);
            let text = match format {
                migrate::Format::Table => migrate::table(&report),
                migrate::Format::Json => migrate::json(&report),
            };
            println!("{}", text.trim_end());
            Ok(failure_if(report.fails(fail_on)))
        }
        Command::Netpol {
            paths,
            gateway_namespace,
            gateway_labels,
        } => {
            let inventory = read_inventory(&paths)?;
            let mut labels = std::collections::BTreeMap::new();
            for l in &gateway_labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--gateway-label {l:?}: write KEY=VALUE"))?;
                labels.insert(k.to_string(), v.to_string());
            }
            let gateway = portcullis_scan::netpol::GatewayPods {
                namespace: gateway_namespace,
                labels,
            };
            print!(
                "{}",
                portcullis_scan::netpol::network_policies(&inventory, &gateway)
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Echo { listen, name } => {
            let listener = server::bind("echo", listen).await?;
            tokio::select! {
                r = echo::run(listener, name) => r?,
                _ = server::termination_signal() => {}
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// Reads manifest files, directories and stdin (`-`) for `scan` and `netpol`. A file
/// that cannot be read is reported in the scan and the rest is still read.
fn read_inventory(paths: &[PathBuf]) -> anyhow::Result<portcullis_scan::Inventory> {
    let mut inventory = portcullis_scan::Inventory::default();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("cannot read stdin")?;
            inventory.add_text("-", &text);
            continue;
        }
        let files = source::list_files(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut charts = std::collections::BTreeSet::new();
        for file in files {
            if portcullis_scan::is_helm_template(&file) {
                if let Some(chart) = file.ancestors().find(|d| d.join("Chart.yaml").is_file()) {
                    charts.insert(chart.to_path_buf());
                }
                continue;
            }
            match std::fs::read_to_string(&file) {
                Ok(text) => inventory.add_text(&file.display().to_string(), &text),
                Err(e) => inventory.problems.push(portcullis_config::Problem::error(
                    None,
                    "",
                    format!("{}: {e}", file.display()),
                )),
            }
        }
        for chart in charts {
            eprintln!(
                "note: Helm chart {} skipped: scan what it renders with `helm template {} | portcullis scan -`",
                chart.display(),
                chart.display()
            );
        }
    }
    Ok(inventory)
}

fn load_settings(path: Option<&PathBuf>) -> anyhow::Result<Settings> {
    match path {
        None => Ok(Settings::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            Settings::from_yaml(&text).with_context(|| format!("in {}", p.display()))
        }
    }
}

fn read_once(path: &PathBuf) -> anyhow::Result<Manifests> {
    if path.as_os_str() == "-" {
        return Ok(source::read_stdin()?);
    }
    Ok(FileSource::new(path).load()?)
}

/// Where `serve` and `controller` get their configuration.
enum ConfigSource {
    /// A directory or file, polled for changes.
    Files { path: PathBuf, watch_interval: Duration },
    /// Stdin, read once.
    Stdin,
    /// The API server, watched.
    Cluster {
        namespaces: Vec<String>,
        status: portcullis::status::StatusConfig,
    },
}

async fn serve(settings: Settings, config_source: ConfigSource) -> anyhow::Result<()> {
    let generated = tls::generate_default_certificate()
        .map_err(anyhow::Error::msg)
        .context("cannot generate the default certificate")?;
    let gateway = Arc::new(
        Gateway::new(settings.clone(), generated)
            .with_context(|| format!("cannot open the audit log {}", settings.audit_log.path))?,
    );
    let (stop, shutdown) = Shutdown::new();
    // Health and readiness answer from the start (not ready until the first snapshot).
    let admin_listener = server::bind("admin", settings.listen.admin).await?;
    tracing::info!(listener = "admin", addr = %admin_listener.local_addr()?, "listening");
    tokio::spawn(admin::serve(gateway.clone(), admin_listener, shutdown.clone()));

    let mut file_source = None;
    let mut problems: Arc<[portcullis_config::Problem]> = Arc::new([]);
    match &config_source {
        ConfigSource::Files { path, .. } => {
            // Off the serving thread, as every reload: the admin listener answers meanwhile.
            let mut source = FileSource::new(path);
            let loaded = load(&mut source)
                .await
                .context("reading the manifests panicked")??;
            (problems, ()) = compile_and_publish(&gateway, move || loaded, problems, |_, _| ())
                .await
                .context("compiling or publishing the configuration panicked")?;
            file_source = Some(source);
        }
        ConfigSource::Stdin => {
            let manifests = tokio::task::spawn_blocking(source::read_stdin)
                .await
                .context("reading the manifests panicked")??;
            compile_and_publish(&gateway, move || manifests, Arc::new([]), |_, _| ())
                .await
                .context("compiling or publishing the configuration panicked")?;
        }
        ConfigSource::Cluster { namespaces, status } => {
            tracing::info!(namespaces = ?namespaces, "watching the API server; not ready until every initial list completes");
            portcullis::controller::start(gateway.clone(), namespaces.clone(), status.clone()).await?;
        }
    }
    if gateway.runtime().snapshot.certificates.default.is_none() {
        tracing::warn!("no tls.defaultCertificate configured: serving a self-signed default certificate");
    }

    let (http, https) = match server::inherited_listeners()? {
        Some(inherited) => {
            tracing::info!("serving on the sockets inherited through LISTEN_FDS; listen.http and listen.https are not used");
            inherited
        }
        None => (
            server::bind("http", settings.listen.http).await?,
            server::bind("https", settings.listen.https).await?,
        ),
    };
    let https_port = settings
        .listen
        .https_redirect_port
        .unwrap_or(https.local_addr()?.port());
    gateway
        .https_port
        .store(https_port, std::sync::atomic::Ordering::Relaxed);
    for (name, l) in [("http", &http), ("https", &https)] {
        tracing::info!(listener = name, addr = %l.local_addr()?, "listening");
    }

    let tls_configs =
        Arc::new(tls::Configs::new(gateway.clone()).context("cannot build the TLS configuration")?);
    let auth = portcullis::auth::Auth::new(&settings, &gateway.runtime().snapshot)
        .context("cannot set up authentication")?;
    auth.warm_up().await;
    let global_limiter = match &settings.rate_limits.redis {
        Some(url) => Some(
            portcullis::limits::GlobalLimiter::new(
                url,
                gateway.metrics.redis_fallbacks.clone(),
                gateway.metrics.redis_up.clone(),
            )
            .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let proxy = Arc::new(
        Proxy::new(gateway.clone(), auth, global_limiter)
            .context("cannot build the backend TLS configuration")?,
    );
    let drain = Drain::default();
    let listeners = [
        Listener {
            name: "http",
            listener: http,
            tls: None,
            proxy_protocol: settings.listen.proxy_protocol.http,
        },
        Listener {
            name: "https",
            listener: https,
            tls: Some(tls_configs),
            proxy_protocol: settings.listen.proxy_protocol.https,
        },
    ];
    let mut accept_loops = Vec::new();
    for listener in listeners {
        accept_loops.push(tokio::spawn(server::serve(
            proxy.clone(),
            listener,
            shutdown.clone(),
            drain.sender.clone(),
        )));
    }
    if let (Some(mut source), ConfigSource::Files { watch_interval, .. }) = (file_source, &config_source) {
        let watch_interval = *watch_interval;
        let gateway = gateway.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut hangup = hangup_signal();
            let mut last = fingerprint(&source).await;
            loop {
                let forced = tokio::select! {
                    () = tokio::time::sleep(watch_interval) => false,
                    () = hangup.wait() => {
                        gateway.audit.reopen();
                        true
                    }
                    () = shutdown.wait() => return,
                };
                let now = fingerprint(&source).await;
                if !forced && now == last {
                    continue;
                }
                last = now;
                reload(&gateway, &mut source, &mut problems).await;
            }
        });
    }

    let signal = server::termination_signal().await;
    tracing::info!(
        signal,
        "shutting down: no new connections, draining in-flight requests"
    );
    gateway.set_not_ready();
    stop.begin();
    for l in accept_loops {
        let _ = l.await;
    }
    if drain.wait(settings.timeouts.shutdown_grace.0).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(grace = ?settings.timeouts.shutdown_grace.0, "grace period over; closing remaining connections");
    }
    // The audit writer batches: what it holds is written before the process ends.
    let audit = gateway.clone();
    let flushed = tokio::task::spawn_blocking(move || audit.audit.flush(Duration::from_secs(5))).await;
    if !matches!(flushed, Ok(true)) {
        tracing::warn!("the audit log could not be flushed at shutdown: its last events may be lost");
    }
    Ok(())
}

/// The manifest files' names, times and sizes. Listing and stating thousands of files
/// every watch interval runs off the serving threads, like the reloads it triggers.
async fn fingerprint(source: &FileSource) -> Option<source::Fingerprint> {
    let root = source.root().to_path_buf();
    tokio::task::spawn_blocking(move || source::fingerprint(&root).ok())
        .await
        .ok()
        .flatten()
}

/// Reads the manifests off the serving threads: reading and parsing thousands of files
/// would stall the requests of the thread it ran on. `source` is lent to a blocking
/// task and comes back with its cache updated; Err if that task panicked (the source
/// then starts again with an empty cache).
async fn load(
    source: &mut FileSource,
) -> Result<Result<Manifests, source::SourceError>, tokio::task::JoinError> {
    let mut taken = std::mem::replace(source, FileSource::new(source.root()));
    let (back, loaded) = tokio::task::spawn_blocking(move || {
        let loaded = taken.load();
        (taken, loaded)
    })
    .await?;
    *source = back;
    Ok(loaded)
}

async fn reload(
    gateway: &Arc<Gateway>,
    source: &mut FileSource,
    problems: &mut Arc<[portcullis_config::Problem]>,
) {
    let label = |result| portcullis::metrics::ResultLabel { result };
    let loaded = match load(source).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "reading the manifests failed; keeping the last good configuration");
            gateway.metrics.reloads.get_or_create(&label("failure")).inc();
            return;
        }
    };
    match loaded {
        Ok(manifests) => {
            match compile_and_publish(gateway, move || manifests, problems.clone(), |_, _| ()).await {
                Ok((now, ())) => {
                    *problems = now;
                    gateway.metrics.reloads.get_or_create(&label("success")).inc();
                }
                Err(e) => {
                    tracing::error!(error = %e, "compiling or publishing the configuration panicked; keeping the last good configuration");
                    gateway.metrics.reloads.get_or_create(&label("failure")).inc();
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the last good configuration");
            gateway.metrics.reloads.get_or_create(&label("failure")).inc();
        }
    }
}

/// SIGHUP, for an immediate reload.
struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        Hangup(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
    }
    #[cfg(not(unix))]
    {
        Hangup()
    }
}

impl Hangup {
    async fn wait(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.0.as_mut() {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn worker_threads_come_from_the_environment_or_the_cpus() {
        assert_eq!(worker_threads(Some("1".into())).unwrap(), 1);
        assert_eq!(worker_threads(Some(" 3 ".into())).unwrap(), 3);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(worker_threads(None).unwrap(), cpus);
        for bad in ["0", "-1", "two", ""] {
            let e = worker_threads(Some(bad.into())).unwrap_err().to_string();
            assert!(
                e.contains("TOKIO_WORKER_THREADS") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
        use std::os::unix::ffi::OsStringExt;
        let e = worker_threads(Some(std::ffi::OsString::from_vec(vec![0xff]))).unwrap_err();
        assert!(e.to_string().contains("TOKIO_WORKER_THREADS"), "{e}");
    }
}
