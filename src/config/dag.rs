//! The pipeline DAG: a stable topological order, or the cycle that prevents one.

/// Orders nodes so that each comes after its dependencies; among the nodes
/// ready at the same time, the lowest index (config order) goes first.
///
/// `deps[i]` lists the indices node `i` depends on. On a cycle, returns the
/// cycle in data-flow order (upstream first), starting at its lowest index and
/// ending where it started: `[a, b, a]` means `a` feeds `b` feeds `a`.
pub(crate) fn topo_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let ready = (0..n).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
        match ready {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => return Err(find_cycle(deps, &done)),
        }
    }
    Ok(order)
}

/// Every node not done has a dependency not done, so walking dependencies
/// from any of them must come back to a node already on the walk.
fn find_cycle(deps: &[Vec<usize>], done: &[bool]) -> Vec<usize> {
    let start = (0..deps.len()).find(|&i| !done[i]).unwrap_or(0);
    let mut walk = vec![start];
    loop {
        let cur = *walk.last().unwrap_or(&start);
        let Some(&next) = deps[cur].iter().find(|&&d| !done[d]) else {
            return walk; // unreachable while the invariant holds
        };
        if let Some(pos) = walk.iter().position(|&w| w == next) {
            // walk[pos..] lists each node followed by one it depends on:
            // reverse it for data-flow order, then start at the lowest index.
            let mut cycle: Vec<usize> = walk[pos..].iter().rev().copied().collect();
            let min_at = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| **v)
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(min_at);
            cycle.push(cycle[0]);
            return cycle;
        }
        walk.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_config_order_among_ready_nodes() {
        // 0: qsiparc <- 2, 1: bids, 2: qsirecon <- 3, 3: qsiprep <- 1, 4: other
        let deps = vec![vec![2], vec![], vec![3], vec![1], vec![]];
        assert_eq!(topo_order(&deps), Ok(vec![1, 3, 2, 0, 4]));
    }

    #[test]
    fn independent_nodes_stay_in_order() {
        assert_eq!(topo_order(&[vec![], vec![], vec![]]), Ok(vec![0, 1, 2]));
    }

    #[test]
    fn reports_a_cycle_in_data_flow_order() {
        // 0: bids, 1: qsiprep <- 0, 2, 2: qsirecon <- 1, 3: downstream <- 2
        let deps = vec![vec![], vec![0, 2], vec![1], vec![2]];
        assert_eq!(topo_order(&deps), Err(vec![1, 2, 1]));
    }

    #[test]
    fn reports_a_longer_cycle_from_its_first_node() {
        // 0 <- 2, 1 <- 0, 2 <- 1: 0 feeds 1 feeds 2 feeds 0
        let deps = vec![vec![2], vec![0], vec![1]];
        assert_eq!(topo_order(&deps), Err(vec![0, 1, 2, 0]));
    }
}
