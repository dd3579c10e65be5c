//! Listen addresses as the original Mube (a Go program) wrote them.

use std::net::{IpAddr, SocketAddr};

/// Go's `net.Listen` forms: `:8080` is every interface, `host:port` one
/// (`localhost` is 127.0.0.1).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not host:port (for example \":8080\")"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?}: port {port:?} is not a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = match host {
        "" => IpAddr::from([0, 0, 0, 0]),
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .parse()
            .map_err(|_| format!("{text:?}: host {h:?} is not an IP address"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        assert_eq!(
            parse_listen(":8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen("127.0.0.1:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert_eq!(
            parse_listen("localhost:2").unwrap(),
            "127.0.0.1:2".parse().unwrap()
        );
        assert_eq!(parse_listen("[::1]:3").unwrap(), "[::1]:3".parse().unwrap());
        assert!(parse_listen("8080").is_err());
        assert!(parse_listen(":99999").is_err());
        assert!(parse_listen("example.com:80").is_err());
    }
}
