//! Arguments, environment, exit, stdio and terminals.

use serde_json::{Value, json};
use wasmtime::component::Resource;

use super::{
    Stream,
    wasi::{
        cli::{
            environment, exit, stderr, stdin, stdout, terminal_input, terminal_output, terminal_stderr,
            terminal_stdin, terminal_stdout,
        },
        io::streams::{InputStream, OutputStream},
    },
};
use crate::wasm::host::{Ctx, Exit, sys::visible_env};

fn strings(v: &Value, name: &str) -> Vec<String> {
    v.get(name)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

impl environment::Host for Ctx {
    /// The variables the manifest requests and the gate allows; the others
    /// are left out (and recorded as denied).
    fn get_environment(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        let r = self.call("get-environment", json!({}), visible_env)?;
        Ok(strings(&r, "env")
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect())
    }

    fn get_arguments(&mut self) -> wasmtime::Result<Vec<String>> {
        let r = self.call("get-arguments", json!({}), |live| json!({"errno": 0, "args": live.args}))?;
        Ok(strings(&r, "args"))
    }

    fn initial_cwd(&mut self) -> wasmtime::Result<Option<String>> {
        self.call("initial-cwd", json!({}), |_| json!({"errno": 0}))?;
        Ok(None)
    }
}

impl exit::Host for Ctx {
    fn exit(&mut self, status: Result<(), ()>) -> wasmtime::Result<()> {
        let code = if status.is_ok() { 0 } else { 1 };
        self.call("exit", json!({"code": code}), |_| json!({"errno": 0}))?;
        Err(Exit(code).into())
    }

    fn exit_with_code(&mut self, status_code: u8) -> wasmtime::Result<()> {
        let code = i32::from(status_code);
        self.call("exit-with-code", json!({"code": code}), |_| json!({"errno": 0}))?;
        Err(Exit(code).into())
    }
}

impl Ctx {
    /// A new handle for `stream`, recorded as the answer of `name`.
    fn stdio(&mut self, name: &str, stream: Stream) -> wasmtime::Result<u32> {
        self.call(name, json!({}), |_| json!({"errno": 0}))?;
        let h = self.p2.handle();
        self.p2.streams.insert(h, stream);
        Ok(h)
    }
}

impl stdin::Host for Ctx {
    fn get_stdin(&mut self) -> wasmtime::Result<Resource<InputStream>> {
        Ok(Resource::new_own(self.stdio("get-stdin", Stream::Stdin)?))
    }
}

impl stdout::Host for Ctx {
    fn get_stdout(&mut self) -> wasmtime::Result<Resource<OutputStream>> {
        Ok(Resource::new_own(self.stdio("get-stdout", Stream::Stdout)?))
    }
}

impl stderr::Host for Ctx {
    fn get_stderr(&mut self) -> wasmtime::Result<Resource<OutputStream>> {
        Ok(Resource::new_own(self.stdio("get-stderr", Stream::Stderr)?))
    }
}

/// Capsules have no terminal: every `get-terminal-*` answers none.
fn no_terminal<T: 'static>(ctx: &mut Ctx, name: &str) -> wasmtime::Result<Option<Resource<T>>> {
    ctx.call(name, json!({}), |_| json!({"errno": 0}))?;
    Ok(None)
}

impl terminal_input::Host for Ctx {}
impl terminal_input::HostTerminalInput for Ctx {
    fn drop(&mut self, _rep: Resource<terminal_input::TerminalInput>) -> wasmtime::Result<()> {
        Ok(())
    }
}
impl terminal_output::Host for Ctx {}
impl terminal_output::HostTerminalOutput for Ctx {
    fn drop(&mut self, _rep: Resource<terminal_output::TerminalOutput>) -> wasmtime::Result<()> {
        Ok(())
    }
}
impl terminal_stdin::Host for Ctx {
    fn get_terminal_stdin(&mut self) -> wasmtime::Result<Option<Resource<terminal_input::TerminalInput>>> {
        no_terminal(self, "get-terminal-stdin")
    }
}
impl terminal_stdout::Host for Ctx {
    fn get_terminal_stdout(&mut self) -> wasmtime::Result<Option<Resource<terminal_output::TerminalOutput>>> {
        no_terminal(self, "get-terminal-stdout")
    }
}
impl terminal_stderr::Host for Ctx {
    fn get_terminal_stderr(&mut self) -> wasmtime::Result<Option<Resource<terminal_output::TerminalOutput>>> {
        no_terminal(self, "get-terminal-stderr")
    }
}
