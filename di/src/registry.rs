//! The registry: task and hook definitions collected by `inventory` from
//! every linked crate, checked for duplicate names at start-up.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::container::Container;
use crate::context::TaskContext;
use crate::envelope::{CodecError, Envelope, encode_value};
use crate::schema::ArgsSchema;
use crate::task::{Failure, TaskOptions, TaskResult, name_from_module_path};
use crate::{BotApi, Db, ResultStore};

/// How one attempt of a registered task ended, before classification.
#[derive(Debug)]
pub enum RunError {
    /// The arguments do not decode as the task's `Args`.
    BadArguments(String),
    /// The task returned an error.
    Failed(Failure),
}

/// The type-erased future of one task run: the output as a MessagePack value.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<rmpv::Value, RunError>> + Send>>;

/// One registered task, as `register_task!` submits it.
#[derive(Debug)]
pub struct TaskDef {
    module_path: &'static str,
    /// Where it was registered, for the duplicate-name error.
    pub file: &'static str,
    /// The line of the `register_task!`.
    pub line: u32,
    /// Its options.
    pub options: TaskOptions,
    run: fn(TaskContext, &Envelope) -> TaskFuture,
    check: fn(&Envelope) -> Result<(), CodecError>,
    /// Describes the arguments (read from the `Args` type when asked).
    schema: fn() -> ArgsSchema,
}

inventory::collect!(TaskDef);

fn schema_unknown() -> ArgsSchema {
    ArgsSchema::Unknown
}

impl TaskDef {
    /// Used by [`register_task!`](crate::register_task).
    pub const fn new(
        module_path: &'static str,
        file: &'static str,
        line: u32,
        options: TaskOptions,
        run: fn(TaskContext, &Envelope) -> TaskFuture,
        check: fn(&Envelope) -> Result<(), CodecError>,
    ) -> Self {
        Self { module_path, file, line, options, run, check, schema: schema_unknown }
    }

    /// Describes the arguments with `schema` (the macro passes
    /// [`crate::schema::of`] for the task's `Args`).
    pub const fn with_schema(mut self, schema: fn() -> ArgsSchema) -> Self {
        self.schema = schema;
        self
    }

    /// The task's arguments: fields, types and defaults.
    pub fn schema(&self) -> ArgsSchema {
        (self.schema)()
    }

    /// Checks that the envelope's arguments decode as this task's `Args`,
    /// strictly: a missing, unknown or mistyped field is an error naming it
    /// (the CLI does this before publishing; the worker decodes the same way).
    pub fn check_args(&self, envelope: &Envelope) -> Result<(), CodecError> {
        (self.check)(envelope)
    }

    /// The registered name.
    pub fn name(&self) -> &'static str {
        self.options.name.unwrap_or_else(|| name_from_module_path(self.module_path))
    }

    /// Decodes the arguments from `envelope` and starts the task.
    pub fn start(&self, ctx: TaskContext, envelope: &Envelope) -> TaskFuture {
        (self.run)(ctx, envelope)
    }

    fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// Adapts a typed task function to the registry (used by the macro).
pub fn erase<A, O, Fut>(ctx: TaskContext, envelope: &Envelope, run: fn(TaskContext, A) -> Fut) -> TaskFuture
where
    A: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    Fut: Future<Output = TaskResult<O>> + Send + 'static,
{
    let args = envelope.decode_args::<A>();
    Box::pin(async move {
        let args = args.map_err(|e| RunError::BadArguments(e.0))?;
        let output = run(ctx, args).await.map_err(RunError::Failed)?;
        encode_value(&output).map_err(|e| RunError::Failed(Failure::fatal(format!("output: {e}"))))
    })
}

/// Checks arguments against a task's `Args` (used by the macro).
pub fn check<A: DeserializeOwned>(envelope: &Envelope) -> Result<(), CodecError> {
    envelope.decode_args::<A>().map(drop)
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// After the container is built, before the first task is pulled.
    Startup,
    /// After the last task finished, before the container closes.
    Shutdown,
}

/// What a hook is given: the components.
#[derive(Clone)]
pub struct HookContext {
    container: Arc<dyn Container>,
}

impl std::fmt::Debug for HookContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookContext")
    }
}

impl HookContext {
    /// A context over `container`.
    pub fn new(container: Arc<dyn Container>) -> Self {
        Self { container }
    }

    /// The database.
    pub fn db(&self) -> Arc<dyn Db> {
        self.container.resolve()
    }

    /// The Telegram Bot API.
    pub fn bot(&self) -> Arc<dyn BotApi> {
        self.container.resolve()
    }

    /// The result store.
    pub fn results(&self) -> Arc<dyn ResultStore> {
        self.container.resolve()
    }
}

/// What a hook returns.
pub type HookResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The type-erased future of a hook.
pub type HookFuture = Pin<Box<dyn Future<Output = HookResult> + Send>>;

/// One registered hook, as `register_hook!` submits it.
#[derive(Debug)]
pub struct HookDef {
    /// When it runs.
    pub kind: HookKind,
    /// Its path, e.g. `tasks::send_report::warm_cache`.
    pub name: &'static str,
    /// Where it was registered.
    pub file: &'static str,
    /// The line of the `register_hook!`.
    pub line: u32,
    run: fn(HookContext) -> HookFuture,
}

inventory::collect!(HookDef);

impl HookDef {
    /// Used by [`register_hook!`](crate::register_hook).
    pub const fn new(
        kind: HookKind,
        name: &'static str,
        file: &'static str,
        line: u32,
        run: fn(HookContext) -> HookFuture,
    ) -> Self {
        Self { kind, name, file, line, run }
    }

    /// Runs the hook.
    pub fn run(&self, ctx: HookContext) -> HookFuture {
        (self.run)(ctx)
    }
}

/// Why the registry is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two tasks claim one name.
    #[error("two tasks are named {name:?}: one registered at {first}, one at {second}; give one another name")]
    Duplicate {
        /// The contested name.
        name: String,
        /// Where the first was registered.
        first: String,
        /// Where the second was registered.
        second: String,
    },
}

/// Every task linked into this binary, by name.
#[derive(Debug, Clone)]
pub struct Registry {
    tasks: BTreeMap<&'static str, &'static TaskDef>,
}

impl Registry {
    /// Collects every `register_task!` in the binary. Names must be unique.
    pub fn from_inventory() -> Result<Self, RegistryError> {
        Self::from_defs(inventory::iter::<TaskDef>)
    }

    /// Builds a registry from the given definitions (tests use this for
    /// the duplicate rule).
    pub fn from_defs(defs: impl IntoIterator<Item = &'static TaskDef>) -> Result<Self, RegistryError> {
        let mut tasks: BTreeMap<&'static str, &'static TaskDef> = BTreeMap::new();
        for def in defs {
            if let Some(first) = tasks.insert(def.name(), def) {
                let (a, b) = ordered(first.location(), def.location());
                return Err(RegistryError::Duplicate { name: def.name().to_owned(), first: a, second: b });
            }
        }
        Ok(Self { tasks })
    }

    /// The task registered as `name`.
    pub fn get(&self, name: &str) -> Option<&'static TaskDef> {
        self.tasks.get(name).copied()
    }

    /// Every task name, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.keys().copied().collect()
    }

    /// Every task definition, sorted by name.
    pub fn tasks(&self) -> impl Iterator<Item = &'static TaskDef> + '_ {
        self.tasks.values().copied()
    }

    /// The hooks of `kind`, in a stable order (by name).
    pub fn hooks(kind: HookKind) -> Vec<&'static HookDef> {
        let mut hooks: Vec<_> = inventory::iter::<HookDef>.into_iter().filter(|h| h.kind == kind).collect();
        hooks.sort_by_key(|h| h.name);
        hooks
    }
}

/// Inventory's order is unspecified; report locations in a stable order.
fn ordered(a: String, b: String) -> (String, String) {
    if a <= b { (a, b) } else { (b, a) }
}
