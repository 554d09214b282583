/* Search ranking for the weightshare site (conf.py: html_search_scorer).
 *
 * Sphinx gives a page the score of its best-matching query word, so "tied
 * embedding" ranks every page with "tied" in its title alike and then sorts them
 * by name. This adds a point for each query word that appears in the result's
 * title, so the page titled with the words the reader typed comes first.
 */
var Scorer = {
  score: (result) => {
    const [, title, , , score] = result;
    const query = new URLSearchParams(window.location.search).get("q") || "";
    const words = query.toLowerCase().split(/\W+/).filter((w) => w.length > 2);
    const heading = (title || "").toLowerCase();
    return score + words.filter((w) => heading.includes(w)).length;
  },
  objNameMatch: 11,
  objPartialMatch: 6,
  objPrio: { 0: 15, 1: 5, 2: -5 },
  objPrioDefault: 0,
  title: 15,
  partialTitle: 7,
  term: 5,
  partialTerm: 2,
};
