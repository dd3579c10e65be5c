//! `mubectl get`: tables, objects, and (through `watch`) changes.

use jiff::Timestamp;
use mube_apis::resources::{self, ResourceInfo};
use mube_apis::NODE_LEASE_NAMESPACE;
use serde_json::Value;

use crate::client::{Client, CtlError};
use crate::table::{self, Columns, Format, Heartbeats};
use crate::GetArgs;

/// The kind a user's word names, from the server's discovery.
pub async fn resource(client: &Client, word: &str) -> Result<&'static ResourceInfo, CtlError> {
    crate::discovery::by_name(client, word).await
}

/// The query string for selectors.
pub fn selector_query(args: &GetArgs) -> form_urlencoded::Serializer<'static, String> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(l) = &args.selector {
        q.append_pair("labelSelector", l);
    }
    if let Some(f) = &args.field_selector {
        q.append_pair("fieldSelector", f);
    }
    q
}

/// What a printed object needs besides itself.
pub struct Printer {
    pub format: Format,
    pub all_namespaces: bool,
    pub heartbeats: Heartbeats,
    pub columns: Columns,
    /// For kinds printed from the server's Tables: the columns shown (their
    /// index in the Table and their header), learned from the first Table.
    /// `None` for Nodes, which mubectl prints itself.
    pub server_columns: Option<Vec<(usize, String)>>,
    /// Whether this kind is printed from server-side Tables.
    pub server_tables: bool,
}

/// Where a row's cells are kept on the objects a server Table is turned
/// into (`rows_of`).
const CELLS: &str = "__cells";

/// A Table's rows as objects: each row's object (its metadata, which the
/// watch and list logic key and order by) with its cells beside it.
pub fn rows_of(table: &Value) -> Vec<Value> {
    table["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let mut object = row
                .get("object")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            if let Some(map) = object.as_object_mut() {
                map.insert(CELLS.into(), row.get("cells").cloned().unwrap_or_default());
            }
            object
        })
        .collect()
}

impl Printer {
    /// Takes the column definitions of a server Table, when it has them (a
    /// watch sends them with its first Table only).
    pub fn learn_columns(&mut self, table: &Value) {
        // Later Tables of a watch carry none, or an empty list.
        let Some(definitions) = table["columnDefinitions"]
            .as_array()
            .filter(|d| !d.is_empty())
        else {
            return;
        };
        let wide = self.format == Format::Wide;
        self.server_columns = Some(
            definitions
                .iter()
                .enumerate()
                .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
                .map(|(i, c)| (i, c["name"].as_str().unwrap_or("").to_ascii_uppercase()))
                .collect(),
        );
    }

    pub fn headers(&self, kind: &str) -> Vec<String> {
        match &self.server_columns {
            Some(columns) => {
                let mut h: Vec<String> = columns.iter().map(|(_, n)| n.clone()).collect();
                if self.all_namespaces {
                    h.insert(0, "NAMESPACE".into());
                }
                h
            }
            None => table::headers(kind, self.format == Format::Wide, self.all_namespaces)
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }

    pub fn row(&self, object: &Value) -> Vec<String> {
        let Some(columns) = &self.server_columns else {
            return table::row(
                object,
                self.format == Format::Wide,
                self.all_namespaces,
                &self.heartbeats,
                Timestamp::now(),
            );
        };
        let mut cells: Vec<String> = columns
            .iter()
            .map(|(i, _)| match &object[CELLS][*i] {
                Value::String(s) => s.clone(),
                Value::Null => "<none>".into(),
                other => other.to_string(),
            })
            .collect();
        if self.all_namespaces {
            let ns = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            cells.insert(0, ns.to_string());
        }
        cells
    }

    /// Prints objects in the chosen format; a table gets its header line
    /// when `header` is set.
    pub fn print(&mut self, kind: &str, objects: &[Value], header: bool) -> Result<(), CtlError> {
        match self.format {
            Format::Table | Format::Wide => {
                let mut rows: Vec<Vec<String>> = objects.iter().map(|o| self.row(o)).collect();
                if header {
                    rows.insert(0, self.headers(kind));
                }
                self.columns.fit(&rows);
                for r in rows {
                    println!("{}", self.columns.line(&r));
                }
            }
            Format::Json | Format::Yaml => {
                for o in objects {
                    print_document(self.format, o)?;
                }
            }
            Format::Name => {
                for o in objects {
                    let name = o
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    println!("{}/{name}", kind.to_ascii_lowercase());
                }
            }
        }
        Ok(())
    }
}

/// One object as JSON or YAML, as kubectl prints it.
fn print_document(format: Format, object: &Value) -> Result<(), CtlError> {
    let text = match format {
        Format::Yaml => {
            serde_yaml::to_string(object).map_err(|e| CtlError::Other(e.to_string()))?
        }
        _ => {
            serde_json::to_string_pretty(object).map_err(|e| CtlError::Other(e.to_string()))? + "\n"
        }
    };
    print!("{text}");
    Ok(())
}

/// Latest heartbeat per node, from the node Leases.
pub async fn heartbeats(client: &Client) -> Heartbeats {
    let path = resources::LEASES.path(Some(NODE_LEASE_NAMESPACE), None);
    let Ok(list) = client.get(&path).await else {
        return Heartbeats::new();
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l.pointer("/metadata/name")?.as_str()?.to_string(),
                table::time_at(l, "/spec/renewTime")?,
            ))
        })
        .collect()
}

pub async fn run(client: &Client, args: GetArgs) -> Result<(), CtlError> {
    let info = resource(client, &args.resource).await?;
    let format = Format::parse(args.output.as_deref()).map_err(CtlError::Other)?;
    let all_namespaces = info.namespaced && args.all_namespaces;
    let namespace = (!all_namespaces).then_some(args.namespace.as_str());
    let mut printer = Printer {
        format,
        all_namespaces,
        heartbeats: if format == Format::Wide && info.kind == "Node" {
            heartbeats(client).await
        } else {
            Heartbeats::new()
        },
        columns: Columns::default(),
        server_columns: None,
        // Nodes print mube's own view (the original Mube's states, the
        // port, the last heartbeat); every other kind prints the columns
        // its server declares, as kubectl does.
        server_tables: info.kind != "Node" && matches!(format, Format::Table | Format::Wide),
    };
    if let Some(name) = &args.name {
        if args.watch || args.watch_only {
            return Err(CtlError::Other("watching a single object by name is not supported; use --field-selector metadata.name=NAME".into()));
        }
        let path = info.path(namespace, Some(name));
        if printer.server_tables {
            let table = client.get_table(&path).await?;
            printer.learn_columns(&table);
            return printer.print(info.kind, &rows_of(&table), true);
        }
        let object = client.get(&path).await?;
        return printer.print(info.kind, &[object], true);
    }
    if args.watch || args.watch_only {
        return crate::watch::run(client, info, namespace, &args, printer).await;
    }
    let query = selector_query(&args).finish();
    let path = format!("{}?{query}", info.path(namespace, None));
    let items = if printer.server_tables {
        let table = client.get_table(&path).await?;
        printer.learn_columns(&table);
        rows_of(&table)
    } else {
        let list = client.get(&path).await?;
        list["items"].as_array().cloned().unwrap_or_default()
    };
    if matches!(format, Format::Json | Format::Yaml) {
        // As kubectl: a list query prints a List, however many items it
        // found (scripts read `.items[]`); only `get KIND NAME` prints the
        // object itself.
        let list = serde_json::json!({
            "apiVersion": "v1",
            "items": items,
            "kind": "List",
            "metadata": {"resourceVersion": ""},
        });
        return print_document(format, &list);
    }
    if items.is_empty() && matches!(format, Format::Table | Format::Wide) {
        match namespace.filter(|_| info.namespaced) {
            Some(ns) => eprintln!("No resources found in {ns} namespace."),
            None => eprintln!("No resources found"),
        }
        return Ok(());
    }
    printer.print(info.kind, &items, true)
}
